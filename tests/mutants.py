"""``make mutants``: break each core guarantee on purpose, in a temporary copy of the repository, and check that
the tests listed with it fail. Prints a table mutation -> killed/survived; exits 1 if an unexpected one survived.

Each mutation replaces one exact source snippet (it must occur exactly once, so that the list cannot rot silently)
and runs only its own short list of tests. Before the mutations, the union of the listed tests runs once on the
unmutated copy and must pass. Not part of CI: a run takes about 20 minutes on 2 CPU cores.

    python tests/mutants.py                 # all of them
    python tests/mutants.py NAME [NAME ...] # some
    python tests/mutants.py --list          # names and guarantees only
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".venv", ".git", "output_dir", "__pycache__", ".pytest_cache", "*.egg-info",
                              ".benchmarks", "build", "runs")


@dataclass(frozen=True)
class Mutant:
    name: str
    guarantee: str
    """What breaks, in words."""
    file: str
    find: str
    """An exact snippet of ``file``, found exactly once."""
    replace: str
    tests: tuple[str, ...]
    """pytest node ids that must fail."""
    known_survivor: str = ""
    """Why it is expected to survive for now; empty for every mutant the suite must kill."""


MUTANTS = [
    # ------------------------------------------------------------------ training objectives
    Mutant("pgd-trains-on-clean", "PGD fine-tuning trains on the clean images", "mimir_fast/methods/pgd.py",
           "logits = model(x_adv)", "logits = model(imgs)",
           ("tests/test_finetune.py::test_pgd_finetuning_loss_by_hand",)),
    Mutant("trades-kl-times-zero", "TRADES' β·KL term multiplied by 0", "mimir_fast/methods/trades.py",
           "self.options.beta * kl", "0 * kl",
           ("tests/test_finetune.py::test_trades_finetuning_loss_by_hand",)),
    Mutant("trades-attack-kl-reversed", "TRADES' attack ascends KL(f(x') ‖ f(x)) instead of KL(f(x) ‖ f(x'))",
           "mimir_fast/attacks/classify.py",
           'lambda x: F.kl_div(F.log_softmax(model(x), dim=1), p_clean, reduction="sum")',
           'lambda x: F.kl_div(p_clean.log(), F.softmax(model(x), dim=1), reduction="sum")',
           ("tests/test_attack_classify.py::test_trades_attack_equals_the_plain_rederivation_within_the_ball",)),
    Mutant("attack-in-train-mode", "attacks run in training mode (drop-path on)", "mimir_fast/attacks/linf.py",
           "    model.eval()\n    for p in frozen:", "    for p in frozen:",
           ("tests/test_finetune.py::test_pgd_finetuning_loss_by_hand",)),
    Mutant("mimir-hsic-weight-dropped", "MIMIR's λ·HSIC term dropped from the loss", "mimir_fast/methods/mimir.py",
           '"loss": mae_loss + opts.mi_xpl * hsic', '"loss": mae_loss + 0 * hsic',
           ("tests/test_objective.py::test_mimir_step_matches_the_spec",
            "tests/test_objective.py::test_hsic_trains_the_encoder_only")),
    Mutant("attack-uses-training-mask-ratio", "MIMIR's attack masks at the training mask ratio, not its own",
           "mimir_fast/methods/mimir.py", "mask_ratio=cfg.attack_mask_ratio)", "mask_ratio=cfg.mask_ratio)",
           ("tests/test_objective.py::test_attack_uses_its_own_mask_ratio",)),
    Mutant("maep-l1-weight-dropped", "MAEP's L1 purification loss dropped", "mimir_fast/methods/maep.py",
           "opts.l1_weight * pur_loss", "0 * pur_loss",
           ("tests/test_maep.py::test_maep_loss_matches_the_rederivation",)),
    Mutant("de3-denorm-from-noisy-image", "De^3's clean denorm statistics taken from the noisy image",
           "mimir_fast/purify/de3.py", 'patch_stats(self.nim, x if self.denorm_stats == "clean" else noisy)',
           "patch_stats(self.nim, noisy)",
           ("tests/test_de3_finetune.py::test_training_input_is_the_clamped_reconstruction_by_hand",
            "tests/test_nim.py::test_de3_matches_the_pipeline_by_hand_for_each_denorm_stats")),
    # ------------------------------------------------------------------ the training machinery
    Mutant("accum-zeroes-every-micro-batch", "gradients zeroed on every micro-batch under accum_iter > 1",
           "mimir_fast/train/engine.py", '    (losses["loss"] / accum_iter).backward()',
           '    optimizer.zero_grad(set_to_none=True)\n    (losses["loss"] / accum_iter).backward()',
           ("tests/test_train.py::test_two_micro_batches_of_8_update_as_one_batch_of_16",)),
    Mutant("ranks-share-one-seed", "every DDP rank draws the same masks and random starts",
           "mimir_fast/train/runner.py", "seed = epoch_seed(cfg.seed, rank, epoch)",
           "seed = epoch_seed(cfg.seed, 0, epoch)",
           ("tests/test_distributed.py::test_each_rank_draws_its_own_masks_and_random_starts",)),
    Mutant("nonfinite-update-not-skipped", "an update with a NaN loss or gradient is applied",
           "mimir_fast/train/nonfinite.py", "        if self.fused:\n            self.optimizer.found_inf",
           "        self.found_inf.zero_()\n        if self.fused:\n            self.optimizer.found_inf",
           ("tests/test_nonfinite.py::test_skipped_steps_leave_the_run_as_if_those_batches_were_never_seen",)),
    Mutant("loss-mean-counts-skipped-steps", "the epoch's mean loss divides by the skipped steps too",
           "mimir_fast/train/engine.py", "finite.float()[None]])", "torch.ones_like(finite.float())[None]])",
           ("tests/test_nonfinite.py::test_a_few_bad_steps_are_skipped_counted_and_logged",)),
    Mutant("loss-mean-includes-nan", "the epoch's mean loss sums the non-finite steps' losses",
           "mimir_fast/train/engine.py", "torch.where(finite, step, 0.0)", "step",
           ("tests/test_nonfinite.py::test_a_few_bad_steps_are_skipped_counted_and_logged",)),
    Mutant("checkpoint-written-in-place", "checkpoints written in place, not through a temporary file",
           "mimir_fast/train/checkpoint.py",
           '        with open(tmp, "wb") as f:\n            torch.save(state, f)\n            f.flush()\n'
           "            os.fsync(f.fileno())\n        os.replace(tmp, path)",
           '        with open(path, "wb") as f:\n            torch.save(state, f)\n            f.flush()\n'
           "            os.fsync(f.fileno())",
           ("tests/test_checkpoint.py::test_a_failed_write_never_replaces_a_good_checkpoint",
            "tests/test_checkpoint_kill.py")),
    Mutant("midepoch-rng-not-restored", "a mid-epoch resume does not restore the RNG states",
           "mimir_fast/train/runner.py", 'restore_rng(resumed["rng"], device)', "pass",
           ("tests/test_midepoch.py::test_resume_from_a_mid_epoch_checkpoint_is_exact",)),
    Mutant("resume-settings-check-disabled", "auto-resume continues a run that had other settings",
           "mimir_fast/train/runner.py", "if changed and not cfg.resume:", "if False:",
           ("tests/test_resume_rules.py::test_auto_resume_refuses_a_run_with_other_settings",)),
    Mutant("val-labels-by-folder-numbering", "validation labels by the folder's own class numbering",
           "mimir_fast/data/folder.py", "index = {c: i for i, c in enumerate(self.classes)}",
           "index = {c: i for i, c in enumerate(found)}",
           ("tests/test_data.py::test_class_folders_of_another_split_are_mapped_by_name",)),
    Mutant("auto-dispatch-never-triton", "MIMIR_FAST_KERNELS=auto never picks Triton on CUDA, whatever the records",
           "mimir_fast/ops/_dispatch.py",
           'path, why = _DECISIONS.get(key, (REFERENCE, "no record" if _RUN["loaded"] else "records not loaded"))',
           'path, why = REFERENCE, "no record"',
           ("tests/ops/test_dispatch.py::test_auto_on_a_cuda_identity_runs_the_kernel_only_where_a_record_allows_it",)),
    # ------------------------------------------------------------------ evaluation
    Mutant("eval-starts-by-batch-position", "eval's PGD starts seeded by position in the shard, not example index",
           "mimir_fast/evaluate/suite.py", "unit = example_starts(list(indices),",
           "unit = example_starts(list(range(len(indices))),",
           ("tests/test_eval.py::test_pgd_starts_belong_to_the_example_not_to_its_place_in_the_batch",)),
    Mutant("robustbench-bicubic-is-bilinear", "RobustBench's BicubicRes256Crop224 resizes bilinearly",
           "mimir_fast/evaluate/data.py",
           'mode = InterpolationMode.BICUBIC if name.startswith("Bicubic") else InterpolationMode.BILINEAR',
           "mode = InterpolationMode.BILINEAR",
           ("tests/test_eval.py::test_robustbench_preprocessing_is_torchvisions",)),
    Mutant("check-perturbation-allows-2eps", "perturbation_within_eps allows 2ε", "mimir_fast/evaluate/checks.py",
           "if v > _eps_of(cfg, k) + 1e-6}", "if v > 2 * _eps_of(cfg, k) + 1e-6}",
           ("tests/test_checks.py::test_perturbations_must_stay_within_their_eps",)),
    Mutant("check-eps0-disabled", "eps0_equals_clean always passes", "mimir_fast/evaluate/checks.py",
           '_result("eps0_equals_clean", changed == 0,', '_result("eps0_equals_clean", True,',
           ("tests/test_checks.py::test_eps0_fails_when_one_prediction_changes_at_eps_0",)),
    Mutant("check-monotone-disabled", "monotone_in_eps always passes", "mimir_fast/evaluate/checks.py",
           "None if len(curve) < 2 else not rises,", "None if len(curve) < 2 else True,",
           ("tests/test_checks.py::test_monotone_fails_on_a_curve_that_rises",)),
    Mutant("check-aa-vs-weakest-pgd", "autoattack_le_pgd compares with the weaker PGD", "mimir_fast/evaluate/checks.py",
           "worst = min(pgds.values())", "worst = max(pgds.values())",
           ("tests/test_checks.py::test_autoattack_is_compared_with_the_strongest_pgd",)),
    Mutant("check-large-eps-10-percent", "large_eps_breaks_model allows 10%", "mimir_fast/evaluate/checks.py",
           "acc <= LARGE_EPS_MAX_ACC,", "acc <= 2 * LARGE_EPS_MAX_ACC,",
           ("tests/test_checks.py::test_large_eps_must_break_the_model",)),
    Mutant("check-gradients-flow-disabled", "gradients_flow always passes", "mimir_fast/evaluate/checks.py",
           "fraction <= ZERO_GRAD_MAX_FRACTION", "True",
           ("tests/test_checks.py::test_gradients_must_flow",)),
    Mutant("check-square-sign-flipped", "square_adds_little measures Square's gain with the wrong sign",
           "mimir_fast/evaluate/checks.py", "before - after <= SQUARE_MAX_GAIN", "after - before <= SQUARE_MAX_GAIN",
           ("tests/test_checks.py::test_square_must_add_little_after_the_gradient_attacks",)),
    Mutant("check-slack-for-deterministic", "a deterministic model gets the randomised defence's slack",
           "mimir_fast/evaluate/checks.py", "if not randomized or n == 0:", "if n == 0:",
           ("tests/test_checks.py::test_a_randomised_defence_may_rise_by_two_standard_errors_only",)),
]


def _copy(dest: Path) -> Path:
    """The repository (without .venv, .git, outputs, caches) at ``dest``, with ``kernels/`` reachable as
    ``mimir_fast.kernels`` (as the installed package has it)."""
    shutil.copytree(REPO, dest, ignore=SKIP, symlinks=True)
    link = dest / "mimir_fast" / "kernels"
    if not link.exists():
        link.symlink_to(Path("..") / "kernels")
    return dest


def _env(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(copy)}


def _check_imports_from(copy: Path) -> None:
    """Fail unless ``mimir_fast`` and ``mimir_fast.kernels`` import from ``copy`` (not an installed checkout)."""
    code = "import mimir_fast, mimir_fast.kernels; print(mimir_fast.__file__); print(mimir_fast.kernels.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=_env(copy), capture_output=True, text=True)
    paths = [Path(p).resolve() for p in out.stdout.split()]
    if out.returncode or len(paths) != 2 or not all(p.is_relative_to(copy.resolve()) for p in paths):
        sys.exit(f"mutants: the copy's package does not import from {copy}: {out.stdout}{out.stderr}")


def _pytest(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    """(pytest's exit code, or None on timeout; its output)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        out = subprocess.run(cmd, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, ""
    return out.returncode, out.stdout + out.stderr


def apply(mutant: Mutant, copy: Path) -> None:
    path = copy / mutant.file
    text = path.read_text()
    found = text.count(mutant.find)
    if found != 1:
        sys.exit(f"mutants: {mutant.name}: the snippet occurs {found} times in {mutant.file}, not once; update the "
                 f"list in tests/mutants.py\n--- snippet ---\n{mutant.find}")
    path.write_text(text.replace(mutant.find, mutant.replace))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on the unmutated copy")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant (a hang counts as killed)")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(unknown)}; --list shows them")
    chosen = [by_name[n] for n in args.names] or MUTANTS
    if args.list:
        for m in chosen:
            print(f"{m.name:34} {m.guarantee}" + (f"  [known survivor: {m.known_survivor}]" if m.known_survivor
                                                      else ""))
        return 0

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        tmp = Path(tmp)
        for m in chosen:  # every snippet is checked before anything runs
            apply(m, _copy(tmp / "check"))
            shutil.rmtree(tmp / "check")
        pristine = _copy(tmp / "pristine")
        _check_imports_from(pristine)
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            t = time.perf_counter()
            code, out = _pytest(pristine, tests, args.timeout * 2)
            if code != 0:
                sys.exit(f"mutants: the listed tests do not pass on the unmutated copy (exit {code}):\n{out[-4000:]}")
            print(f"baseline: {len(tests)} test ids pass unmutated ({time.perf_counter() - t:.0f} s)", flush=True)
        rows = []
        for m in chosen:
            copy = _copy(tmp / m.name)
            apply(m, copy)
            t = time.perf_counter()
            code, out = _pytest(copy, m.tests, args.timeout)
            seconds = time.perf_counter() - t
            if code in (4, 5):
                sys.exit(f"mutants: {m.name}: pytest could not run {m.tests} (exit {code}):\n{out[-2000:]}")
            failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
            result = ("killed (timeout)" if code is None else "survived" if code == 0
                      else f"killed by {failed[0].split('::')[-1] if failed else 'an error'}")
            rows.append((m, result, seconds))
            print(f"{m.name}: {result} ({seconds:.0f} s)", flush=True)
            shutil.rmtree(copy)

    print("\n| mutation | guarantee broken | result | s |\n|---|---|---|---|")
    for m, result, seconds in rows:
        note = f" (known: {m.known_survivor})" if m.known_survivor and result == "survived" else ""
        print(f"| `{m.name}` | {m.guarantee} | {result}{note} | {seconds:.0f} |")
    survivors = [m.name for m, result, _ in rows if result == "survived" and not m.known_survivor]
    known = [m.name for m, result, _ in rows if result == "survived" and m.known_survivor]
    killed_known = [m.name for m, result, _ in rows if result != "survived" and m.known_survivor]
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{len(rows) - len(survivors) - len(known)} of {len(rows)} killed, {len(known)} known survivor(s), "
          f"{len(survivors)} unexpected survivor(s); {minutes:.1f} min")
    if killed_known:
        print(f"now killed, drop their known_survivor note: {', '.join(killed_known)}")
    if survivors:
        print(f"SURVIVED: {', '.join(survivors)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())

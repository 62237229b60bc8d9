"""torchrun: DDP and FSDP2 on CPU/gloo match one process at the same global batch; each rank draws its own masks
and random starts; batch and shard errors.

Tolerance. The runs compute the same mathematics; only the order of fp32 reductions differs (a gradient
averaged over two replicas of B versus one mean over 2B, matmuls blocked over another batch size, FSDP's
reduce-scatter). Each such sum carries a relative error of order sqrt(n)·2^-24 ≈ 1e-6, and AdamW turns a
relative gradient error δ into an update error of about lr·δ per step, so after the 8 steps here
(lr ≤ 1e-4) the weights differ by ~1e-10 plus feedback; they come out within one fp32 ulp (1.2e-7 measured).
ATOL = 1e-6 is far above that and far below what a real fault moves: one step moves a weight by ~lr ≈ 1e-4, and a
shard order, gradient averaging or lr scaling error changes every step (the test checks the weights moved
≫ ATOL, and that HSIC over the global batch instead of each replica's misses by ≫ ATOL).

One exception: the key bias (the middle third of ``qkv.bias``). Softmax ignores a constant added to every
key, so its exact gradient is zero and its fp32 gradient is rounding noise, which Adam normalises into steps
of size ~lr in an arbitrary direction: the two runs' key biases differ by up to the total step size
(2.4e-5 measured). They are checked against that bound, 2 × Σ lr_t, instead.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mimir_fast.cli import main
from mimir_fast.data import build_train_dataset, digits_split
from mimir_fast.errors import ConfigError, DataError
from mimir_fast.methods import build_config
from mimir_fast.train.checkpoint import load_checkpoint
from mimir_fast.train.parallel import per_rank_config
from tests import dist_worker

ATOL = 1e-6
N_IMAGES = 64  # global batch 16: 4 steps per epoch, 2 epochs
REPO = Path(__file__).resolve().parents[1]
TOTAL_LR = 8 * 1.5e-3 * 16 / 256  # 12 steps at most at the peak lr (blr 1.5e-3 at global batch 16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_image_per_class(root: Path) -> Path:
    """N_IMAGES digits at 16 px, each its own class (its label is its id for dist_worker's tables)."""
    images, _ = digits_split("train")
    for i in range(N_IMAGES):
        (root / "train" / f"c{i:03d}").mkdir(parents=True)
        pixels = (images[i].permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(pixels).resize((16, 16)).save(root / "train" / f"c{i:03d}" / "x.png")
    return root


def _argv(data: Path, out: Path, method: str, *extra: str) -> list[str]:
    hsic = ["--mi_xpl", "0.1"] if method == "mimir" else []
    return ["pretrain", "--method", method, "--data_path", str(data), "--global_batch_size", "16", "--epochs", "2",
            "--warmup_epochs", "1", "--save_freq", "1", "--print_freq", "100", *hsic,
            "--output_dir", str(out), "--no-auto_resume", *extra]


def _one_process(argv, split, monkeypatch, capsys):
    with monkeypatch.context() as m:
        for owner, name, value in dist_worker.patches(split):
            m.setattr(owner, name, value)
        code = main(argv)
    assert code == 0, capsys.readouterr().err


def _torchrun(*command: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         *command],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )


def _torchrun_worker(runs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    runs_file = tmp_path / "runs.json"
    runs_file.write_text(json.dumps(runs))
    return _torchrun(str(REPO / "tests" / "dist_worker.py"), str(runs_file))


def _weights(out: Path, epoch: int = 1) -> dict:
    return load_checkpoint(out / f"checkpoint-{epoch}.pth")["model"]


def _split_key_bias(state: dict) -> tuple[dict, dict]:
    """(everything but the key biases, the key biases): see the module docstring."""
    rest, keys = dict(state), {}
    for name, value in state.items():
        if name.endswith("attn.qkv.bias"):
            q, k, v = value.chunk(3)
            rest[name], keys[name] = torch.cat([q, v]), k
    return rest, keys


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _assert_close(a: dict, b: dict) -> None:
    (a_rest, a_keys), (b_rest, b_keys) = _split_key_bias(a), _split_key_bias(b)
    assert _max_diff(a_rest, b_rest) < ATOL
    assert _max_diff(a_keys, b_keys) < 2 * TOTAL_LR


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(tmp_path, monkeypatch, capsys):
    data = _one_image_per_class(tmp_path / "data")
    mae_one, mimir_split, mimir_whole = tmp_path / "mae1", tmp_path / "mimir1_split", tmp_path / "mimir1_whole"
    _one_process(_argv(data, mae_one, "mae"), 1, monkeypatch, capsys)
    _one_process(_argv(data, mimir_split, "mimir"), 2, monkeypatch, capsys)
    _one_process(_argv(data, mimir_whole, "mimir"), 1, monkeypatch, capsys)

    ddp, fsdp, mimir_ddp = tmp_path / "mae_ddp", tmp_path / "mae_fsdp", tmp_path / "mimir_ddp"
    resumed, mimir_compiled = tmp_path / "mae_fsdp_resumed", tmp_path / "mimir_ddp_compiled"
    mimir_fsdp = tmp_path / "mimir_fsdp"
    proc = _torchrun_worker([
        {"argv": _argv(data, ddp, "mae")},
        {"argv": _argv(data, fsdp, "mae", "--fsdp")},
        {"argv": _argv(data, resumed, "mae", "--fsdp", "--resume", str(fsdp / "checkpoint-0.pth"))},
        {"argv": _argv(data, mimir_ddp, "mimir")},
        # compiled DDP (Dynamo's DDP graph splitting) with the attack on the compiled module inside DDP
        {"argv": _argv(data, mimir_compiled, "mimir", "--compile", "on"), "compile_backend": "aot_eager"},
        {"argv": _argv(data, mimir_fsdp, "mimir", "--fsdp")},  # the attack's forwards all-gather too
    ], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: final loss") == 6  # rank 0 alone prints
    assert "effective batch size: 16 (8 x 1 accum x 2 processes)" in proc.stdout

    moved = _max_diff(_weights(mae_one, 0), _weights(mae_one, 1))
    assert moved > 100 * ATOL  # training moved the weights far more than the tolerance
    _assert_close(_weights(mae_one), _weights(ddp))
    _assert_close(_weights(mae_one), _weights(fsdp))  # FSDP2's gathered state is in MAE's layout
    assert _max_diff(_weights(fsdp), _weights(resumed)) == 0  # every rank resumed the gathered checkpoint exactly
    fsdp_opt, ddp_opt = (load_checkpoint(d / "checkpoint-1.pth")["optimizer"] for d in (fsdp, ddp))
    assert fsdp_opt["param_groups"] == ddp_opt["param_groups"] and fsdp_opt["state"].keys() == ddp_opt["state"].keys()
    # MIMIR: HSIC over each replica's batch, as one process computing it per half
    _assert_close(_weights(mimir_split), _weights(mimir_ddp))
    _assert_close(_weights(mimir_split), _weights(mimir_compiled))
    _assert_close(_weights(mimir_split), _weights(mimir_fsdp))
    assert "compile:" in proc.stdout  # the compiled run timed its compilation
    whole = _split_key_bias(_weights(mimir_whole))[0]
    assert _max_diff(whole, _split_key_bias(_weights(mimir_ddp))[0]) > 100 * ATOL  # not over the global batch
    assert sorted(p.name for p in ddp.iterdir() if p.suffix == ".pth") == ["checkpoint-0.pth", "checkpoint-1.pth"]


@pytest.mark.slow
def test_each_rank_draws_its_own_masks_and_random_starts(tmp_path):
    """Each rank seeds its epoch from (seed, rank, epoch): the two ranks' mask noise and PGD random starts differ,
    draw for draw (with one seed for both, every replica would mask and start its examples alike)."""
    argv = ["pretrain", "--method", "mimir", "--data", "synthetic", "--synthetic_size", "24", "--batch_size", "4",
            "--model", "mae_vit_micro", "--input_size", "16", "--patch_size", "4", "--epochs", "1",
            "--output_dir", str(tmp_path / "out"), "--no-auto_resume"]
    proc = _torchrun_worker([{"argv": argv, "record": str(tmp_path)}], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"draws-rank{r}.pt") for r in (0, 1)]
    # 3 steps of 4 images per rank: per step one attack start, and an attack mask and a training mask (16 patches)
    for r in ranks:
        assert [tuple(m.shape) for m in r["masks"]] == [(4, 16)] * 6
        assert [tuple(s.shape) for s in r["starts"]] == [(4, 3, 16, 16)] * 3
    for key in ("masks", "starts"):
        for a, b in zip(ranks[0][key], ranks[1][key], strict=True):
            assert (a == b).float().mean() < 0.01  # independent draws (one seed for both: all equal)


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_ranks_is_a_one_line_error(tmp_path):
    data = _one_image_per_class(tmp_path / "data")
    argv = _argv(data, tmp_path / "out", "mae")
    argv[argv.index("--global_batch_size") + 1] = "15"
    proc = _torchrun("-m", "mimir_fast", *argv)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mimir-fast: error:")]
    assert errors == ["mimir-fast: error: global_batch_size 15 does not split over 2 processes x accum_iter 1: give a "
                      "multiple of 2"] * 2  # one line per rank
    assert "mimir_fast/" not in proc.stderr  # no traceback through the package (torchrun adds its own summary)


def test_global_batch_size_sets_the_per_process_batch():
    cfg = build_config("digits", global_batch_size=256, accum_iter=2)
    assert per_rank_config(cfg, 4).batch_size == 32
    assert per_rank_config(build_config("digits", batch_size=8), 4).batch_size == 8  # --batch_size is per process
    with pytest.raises(ConfigError, match="global_batch_size 256 does not split over 3 processes x accum_iter 2"):
        per_rank_config(cfg, 3)
    with pytest.raises(ConfigError, match="global_batch_size must be >= 1"):
        build_config("digits", global_batch_size=0)


def test_a_rank_shard_smaller_than_a_batch_is_a_data_error(tmp_path):
    data = _one_image_per_class(tmp_path / "data")
    cfg = build_config("digits", data_path=str(data), batch_size=64)
    assert len(build_train_dataset(cfg, None, world_size=1)) == N_IMAGES
    with pytest.raises(DataError, match="split over 2 processes that is 32 each, fewer than batch_size 64"):
        build_train_dataset(cfg, None, world_size=2)


def test_rank_shards_are_disjoint_and_tile_the_global_batches():
    from mimir_fast.data.sharding import ShardedBatchSampler

    def batches(rank, world, batch):
        return list(ShardedBatchSampler(50, batch, torch.Generator().manual_seed(3), rank, world))

    one = batches(0, 1, 12)
    r0, r1 = batches(0, 2, 6), batches(1, 2, 6)
    assert len(one) == len(r0) == len(r1) == 4  # 50 // 12: the last partial global batch is dropped
    for whole, a, b in zip(one, r0, r1):
        assert a + b == whole and not set(a) & set(b)


@pytest.mark.slow
def test_slurm_variables_are_the_fallback(tmp_path):
    """``srun`` sets SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, not RANK/WORLD_SIZE: two such processes train
    as one job, and only rank 0 prints and writes."""
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    port = str(_free_port())
    argv = [sys.executable, "-m", "mimir_fast", "pretrain", "--method", "mae", "--data", "synthetic",
            "--synthetic_size", "32", "--batch_size", "8", "--epochs", "1", "--output_dir", str(tmp_path / "out")]
    procs = [
        subprocess.Popen(argv, env={**base, "PYTHONPATH": str(REPO), "SLURM_PROCID": str(r), "SLURM_NTASKS": "2",
                                    "SLURM_LOCALID": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "effective batch size: 16 (8 x 1 accum x 2 processes)" in outputs[0][0] and outputs[1][0] == ""
    assert load_checkpoint(tmp_path / "out" / "checkpoint-0.pth")["epoch"] == 0

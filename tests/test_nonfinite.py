"""Non-finite steps: skipped exactly, counted on the device without a host sync, and too many in a row stop
the run (exit code 1) keeping the last good checkpoint."""

import json
import math

import pytest
import torch
from torch import nn

from mimir_fast.cli import main
from mimir_fast.errors import ConfigError
from mimir_fast.methods import build_config
from mimir_fast.methods.mimir import Mimir
from mimir_fast.train.engine import train_step
from mimir_fast.train.nonfinite import NonFiniteGuard, supports_found_inf
from mimir_fast.train.optim import build_optimizer, param_groups_weight_decay

CPU = torch.device("cpu")


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3))


def _optimizer(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    groups = param_groups_weight_decay(model, 0.05)
    if fused:
        return build_optimizer(groups, 1e-2, (0.9, 0.95), CPU)
    return torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), foreach=True)  # the restore fallback


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)]


def _loss_fn(poison: str | None):
    """Cross-entropy; ``poison`` makes the loss NaN or inf, or keeps it finite with a NaN gradient."""

    def loss_fn(model, x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        if poison == "nan_loss":
            loss = loss * float("nan")
        elif poison == "inf_loss":
            loss = loss + float("inf")
        elif poison == "nan_grad":  # value 0, gradient 0·inf = NaN
            w = model[0].weight
            loss = loss + torch.sqrt((w - w.detach()).abs().sum())
        return {"loss": loss}

    return loss_fn


def _state(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters() if p in opt.state]
    return params, state


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "restore"])
@pytest.mark.parametrize("poison", ["nan_loss", "inf_loss", "nan_grad"])
def test_skipped_steps_leave_the_run_as_if_those_batches_were_never_seen(fused, poison):
    """Bit-identical parameters, moments and step counts (the MLP draws no random numbers, so skipping a
    batch changes nothing else); the first step is among the skipped ones, before any optimizer state."""
    batches, bad = _batches(7), {0, 3, 4}
    model, ref = _mlp(), _mlp()
    opt, ref_opt = _optimizer(model, fused), _optimizer(ref, fused)
    assert supports_found_inf(opt) == fused
    guard = NonFiniteGuard(opt, CPU)
    for i, (x, y) in enumerate(batches):
        train_step(model, x, y, opt, _loss_fn(poison if i in bad else None), None, guard=guard)
        if i not in bad:
            train_step(ref, x, y, ref_opt, _loss_fn(None), None)
        if i == 0:
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(), _mlp().parameters()))
    (params, state), (ref_params, ref_state) = _state(model, opt), _state(ref, ref_opt)
    assert all(torch.equal(p, q) for p, q in zip(params, ref_params))
    assert len(state) == len(ref_state) == len(params)
    for s, r in zip(state, ref_state):
        assert s.keys() == r.keys() and all(torch.equal(s[k], r[k]) for k in s)
    assert int(state[0]["step"]) == 4
    assert guard.read() == (3, 2)  # skipped 3 updates, the longest run is steps 3-4


def test_with_accumulation_one_bad_micro_batch_skips_the_whole_update():
    model = _mlp()
    opt = _optimizer(model, True)
    guard = NonFiniteGuard(opt, CPU)
    before = [p.detach().clone() for p in model.parameters()]
    (x, y), (x2, y2) = _batches(2)
    train_step(model, x, y, opt, _loss_fn("nan_loss"), None, accum_iter=2, update=False, guard=guard)
    train_step(model, x2, y2, opt, _loss_fn(None), None, accum_iter=2, update=True, guard=guard)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert guard.read() == (1, 1)
    train_step(model, x2, y2, opt, _loss_fn(None), None, guard=guard)  # a good update ends the run
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert guard.counters.tolist() == [1.0, 0.0, 1.0]


def test_the_step_and_the_skip_read_nothing_back_to_the_host(monkeypatch):
    """Every Tensor method that copies a value to Python is counted during the steps (the CPU stand-in for
    CUDA's sync debug mode, which tests/test_gpu.py uses)."""
    model = _mlp()
    opt = _optimizer(model, True)
    guard = NonFiniteGuard(opt, CPU)
    batches = _batches(4)
    train_step(model, *batches[0], opt, _loss_fn(None), None, guard=guard)  # lazy optimizer state
    reads = []
    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"):
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _name=name, _real=real, **k):
            reads.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    for (x, y), poison in zip(batches[1:], ["nan_loss", None, "nan_grad"]):
        train_step(model, x, y, opt, _loss_fn(poison), None, guard=guard)
    monkeypatch.undo()
    assert reads == []
    assert guard.read() == (2, 1)


def _poison_from(monkeypatch, first_bad_call: int, last_bad_call: int | None = None) -> list[float]:
    """Make pretraining's loss NaN on calls ``first_bad_call``..``last_bad_call`` (0-based, inclusive); returns the
    list that collects the losses of the calls left finite."""
    real, calls, finite = Mimir.losses, [], []

    def poisoned(self, model, imgs, labels):
        out = real(self, model, imgs, labels)
        calls.append(None)
        bad = first_bad_call <= len(calls) - 1 and (last_bad_call is None or len(calls) - 1 <= last_bad_call)
        if not bad:
            finite.append(out["loss"].item())
        return {**out, "loss": out["loss"] * float("nan")} if bad else out

    monkeypatch.setattr(Mimir, "losses", poisoned)
    return finite


_ARGS = ["pretrain", "--data", "synthetic", "--synthetic_size", "32", "--batch_size", "4", "--model", "mae_vit_micro",
         "--input_size", "16", "--patch_size", "4", "--print_freq", "3"]


def test_a_few_bad_steps_are_skipped_counted_and_logged(tmp_path, monkeypatch, capsys):
    finite = _poison_from(monkeypatch, 2, 4)  # 3 bad steps of 8, fewer than max_nonfinite_steps (5)
    assert main([*_ARGS, "--epochs", "1", "--output_dir", str(tmp_path)]) == 0
    stats = json.loads((tmp_path / "log.txt").read_text().splitlines()[-1])
    assert stats["train_skipped_steps"] == 3
    assert len(finite) == 5 and math.isfinite(stats["train_loss"])
    # the mean over the 5 finite steps, summed in fp32 on the device
    assert stats["train_loss"] == pytest.approx(sum(finite) / 5, rel=8 * torch.finfo(torch.float32).eps)
    assert (tmp_path / "checkpoint-0.pth").exists()
    assert "skipped 3" in capsys.readouterr().out


def test_too_many_in_a_row_stop_with_exit_code_1_and_keep_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    _poison_from(monkeypatch, 8 + 1)  # epoch 0 is clean (8 steps), epoch 1 goes bad from its second step
    code = main([*_ARGS, "--epochs", "2", "--save_freq", "1", "--max_nonfinite_steps", "3",
                 "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert "non-finite on 5 updates in a row (max_nonfinite_steps 3) in epoch 1 by step 6" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pth")) == ["checkpoint-0.pth"]
    assert len((tmp_path / "log.txt").read_text().splitlines()) == 1


def test_max_nonfinite_steps_is_range_checked():
    with pytest.raises(ConfigError, match="max_nonfinite_steps must be >= 1"):
        build_config("digits", max_nonfinite_steps=0)

"""``--compile``: a compiled forward gives the eager step's results on the same seed, for MAE, MIMIR (the
attack's input gradient taken outside the compiled region) and PGD fine-tuning.

The tests compile with the ``aot_eager`` backend: the same Dynamo capture and AOTAutograd forward/backward
graphs as inductor, without inductor's code generation (minutes on a shared CPU) and without inductor's own
RNG, so the masks and random starts are eager's numbers and results agree to float rounding.
"""

import pytest
import torch
import torch._dynamo

from mimir_fast.errors import ConfigError
from mimir_fast.models_mae import create_model
from mimir_fast.models_vit import create_classifier
from mimir_fast.train import compile as compile_module
from mimir_fast.train.compile import compile_model, resolve_compile
from mimir_fast.train.engine import train_step
from mimir_fast.train.finetune import finetune_losses
from mimir_fast.train.nonfinite import NonFiniteGuard
from mimir_fast.train.objective import pretrain_losses
from mimir_fast.train.optim import build_optimizer, param_groups_weight_decay
from mimir_fast.train.presets import FINETUNE_PRESETS, build_config

CPU = torch.device("cpu")


def _train(build, loss_fn, mode: str, steps: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = build()
    opt = build_optimizer(param_groups_weight_decay(model, 0.05), 1e-3, (0.9, 0.95), CPU)
    guard = NonFiniteGuard(opt, CPU)
    step_model = compile_model(model, mode)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        imgs, labels = torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        train_step(step_model, imgs, labels, opt, loss_fn, None, guard=guard)
    assert guard.read() == (0, 0)
    return [p.detach().clone() for p in model.parameters()]


def _assert_compiled_equals_eager(build, loss_fn, monkeypatch):
    monkeypatch.setattr(compile_module, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    eager = _train(build, loss_fn, "off")
    torch._dynamo.utils.counters.clear()
    compiled = _train(build, loss_fn, "on")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the forward really was compiled
    start = (torch.manual_seed(0), build())[1]
    assert any(not torch.equal(p, q) for p, q in zip(eager, start.parameters()))  # it trained
    for p, q in zip(compiled, eager):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["mimir", "mae"])
def test_compiled_pretraining_step_equals_eager(method, monkeypatch):
    cfg = build_config("digits", method=method, batch_size=8, input_size=16, patch_size=4)

    def build():
        return create_model("mae_vit_micro", img_size=16, patch_size=4, norm_pix_loss=True)

    _assert_compiled_equals_eager(build, lambda m, x, y: pretrain_losses(m, x, cfg), monkeypatch)


def test_compiled_pgd_finetuning_step_equals_eager(monkeypatch):
    cfg = build_config("digits", FINETUNE_PRESETS, batch_size=8, input_size=16, patch_size=4, drop_path=0.0)

    def build():
        return create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=10, drop_path_rate=0.0)

    _assert_compiled_equals_eager(build, lambda m, x, y: finetune_losses(m, x, y, cfg), monkeypatch)


def test_compile_modes():
    assert resolve_compile("auto", CPU) == "off"
    assert resolve_compile("auto", torch.device("cuda")) == "on"
    assert resolve_compile("on", CPU) == "on"
    with pytest.raises(ConfigError, match="cudagraphs' needs a CUDA device"):
        resolve_compile("cudagraphs", CPU)
    with pytest.raises(ConfigError, match="unknown compile 'fast'"):
        build_config("digits", compile="fast")


def test_apex_optimizer_without_apex_is_a_one_line_config_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "apex", None)  # import apex fails even where it is installed
    monkeypatch.setitem(sys.modules, "apex.optimizers", None)
    with pytest.raises(ConfigError, match="needs NVIDIA apex, which is not installed"):
        build_optimizer([{"params": [torch.nn.Parameter(torch.ones(2))]}], 1e-3, (0.9, 0.95), CPU, "apex_fused_adam")

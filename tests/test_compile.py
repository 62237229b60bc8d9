"""``--compile``: a compiled forward gives the eager step's results on the same seed, for MAE, MIMIR (the
attack's input gradient taken outside the compiled region) and PGD fine-tuning; the compiled attack's backward
computes the input gradient only; under DDP the attack runs on the compiled inner module.

Most tests compile with the ``aot_eager`` backend: the same Dynamo capture and AOTAutograd forward/backward
graphs as inductor, without inductor's code generation and without inductor's own RNG, so the masks and random
starts are eager's numbers and results agree to float rounding. One test compiles the MIMIR step with inductor
itself (about a minute on two cores), with ``fallback_random`` so that it draws eager's numbers.
"""

import pytest
import torch
import torch._dynamo

from mimir_fast.errors import ConfigError
from mimir_fast.methods import build_config, build_finetune_config
from mimir_fast.models_mae import create_model
from mimir_fast.models_vit import create_classifier
from mimir_fast.train import compile as compile_module
from mimir_fast.train.compile import compile_model, resolve_compile
from mimir_fast.train.engine import train_step
from mimir_fast.train.nonfinite import NonFiniteGuard
from mimir_fast.train.optim import build_optimizer, param_groups_weight_decay
from tests.helpers import assert_same_losses_and_grads, compiled_step_grads, finetune_losses, pretrain_losses

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
    cfg = build_finetune_config("digits", batch_size=8, input_size=16, patch_size=4, drop_path=0.0)

    def build():
        return create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=10, drop_path_rate=0.0)

    _assert_compiled_equals_eager(build, lambda m, x, y: finetune_losses(m, x, y, cfg), monkeypatch)


def _micro_mae():
    return create_model("mae_vit_micro", img_size=16, patch_size=4, norm_pix_loss=True)


def test_the_compiled_attack_backward_computes_the_input_gradient_only(monkeypatch):
    """AOTAutograd's backward graph is fixed at compile time: with trainable weights it would return every
    weight gradient on each attack step (≈ 3 passes instead of 2). ``attack_mode`` gives the attack its own graph."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    returned = []  # per compiled backward graph: how many gradients it returns

    def backward_compiler(gm, example_inputs):
        (outputs,) = [n.args[0] for n in gm.graph.nodes if n.op == "output"]
        returned.append(sum(o is not None for o in outputs))
        return make_boxed_func(gm.forward)

    monkeypatch.setattr(compile_module, "BACKEND", aot_autograd(
        fw_compiler=lambda gm, _: make_boxed_func(gm.forward), bw_compiler=backward_compiler))
    torch._dynamo.reset()
    cfg = build_config("digits", method="mimir", steps=2, batch_size=8, input_size=16, patch_size=4)
    model = _micro_mae()
    trainable = sum(p.requires_grad for p in model.parameters())
    step_model = compile_model(model, "on")
    for _ in range(2):
        pretrain_losses(step_model, torch.rand(8, 3, 16, 16), cfg)["loss"].backward()
    # one graph for the attack (input gradient only), one for the training step (every weight gradient)
    assert sorted(returned) == [1, trainable]


def test_under_ddp_the_attack_runs_on_the_compiled_inner_module(monkeypatch):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mimir_fast.train.compile import attack_target

    monkeypatch.setattr(compile_module, "BACKEND", "aot_eager")
    model = _micro_mae()
    assert attack_target(model) is model
    assert attack_target(compile_model(model, "on"))._orig_mod is model
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        assert attack_target(ddp) is model  # eager: the module inside, no gradient sync
        compiled = compile_model(ddp, "on")
        attacked = attack_target(compiled)
        assert isinstance(attacked, torch._dynamo.eval_frame.OptimizedModule) and attacked._orig_mod is model
        assert compiled._orig_mod is ddp and "_mimir_fast_attack_module" not in dict(compiled.named_modules())
    finally:
        dist.destroy_process_group()


def test_inductor_compiled_mimir_step_gives_eagers_losses_and_gradients(monkeypatch):
    """The real code generator on the whole MIMIR step (attack, masking, HSIC, backward). ``fallback_random``
    makes inductor draw eager's masks and starts; the rest differs only by fp32 reassociation, bounded here by
    64 fp32 ulps of each tensor's largest gradient (measured: under 4 ulps)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(compile_module, "BACKEND", "inductor")
    torch._dynamo.reset()
    cfg = build_config("digits", method="mimir", batch_size=8, input_size=16, patch_size=4)
    with inductor_config.patch(fallback_random=True):  # (monkeypatch's undo would hide the option)
        eager, compiled = (compiled_step_grads(mode, cfg, CPU, img_size=16, batch=8) for mode in ("off", "on"))
    assert_same_losses_and_grads(compiled, eager)
    assert not torch.equal(eager[0][0]["loss"], eager[1][0]["loss"])  # fresh draws per step


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

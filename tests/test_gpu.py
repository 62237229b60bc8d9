"""CUDA-only checks (skipped without a GPU): no host sync in the step, bf16 accuracy, attack gradients in bf16,
the CUDA-graphed compiled step against eager."""

import pytest
import torch

from mimir_fast.attacks import pgd_mae
from mimir_fast.methods import build_config, run_pretrain
from mimir_fast.models_mae import create_model
from mimir_fast.train.engine import train_step
from mimir_fast.train.optim import build_optimizer, param_groups_weight_decay
from tests.helpers import assert_same_losses_and_grads, compiled_step_grads, pretrain_losses
from tests.mae_reference import ReferenceMAE

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.mark.parametrize("method,steps", [("mimir", 1), ("mimir", 3), ("mae", 1)])
def test_training_step_never_syncs_with_the_host(method, steps):
    cfg = build_config("cifar10_vit_t", method=method, steps=steps, batch_size=32)
    model = create_model(cfg.model, img_size=32, patch_size=2, norm_pix_loss=True).to(CUDA)
    opt = build_optimizer(param_groups_weight_decay(model, 0.05), 1e-4, (0.9, 0.95), CUDA)
    imgs, labels = torch.rand(32, 3, 32, 32, device=CUDA), torch.zeros(32, dtype=torch.long, device=CUDA)

    def loss_fn(m, x, y):
        return pretrain_losses(m, x, cfg)

    train_step(model, imgs, labels, opt, loss_fn, torch.bfloat16)  # warm-up: lazy inits may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            losses = train_step(model, imgs, labels, opt, loss_fn, torch.bfloat16)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(losses["loss"]).item()


@pytest.mark.parametrize("poison", ["nan_loss", "nan_grad"])
def test_a_skipped_non_finite_step_never_syncs_with_the_host(poison):
    """The skip path (fused AdamW reading ``found_inf``, the gradient check, the device counters)."""
    from mimir_fast.train.nonfinite import NonFiniteGuard

    cfg = build_config("cifar10_vit_t", batch_size=32)
    model = create_model(cfg.model, img_size=32, patch_size=2, norm_pix_loss=True).to(CUDA)
    opt = build_optimizer(param_groups_weight_decay(model, 0.05), 1e-4, (0.9, 0.95), CUDA)
    guard = NonFiniteGuard(opt, CUDA)
    imgs, labels = torch.rand(32, 3, 32, 32, device=CUDA), torch.zeros(32, dtype=torch.long, device=CUDA)

    def loss_fn(m, x, y, bad=False):
        out = pretrain_losses(m, x, cfg)
        if bad and poison == "nan_loss":
            out["loss"] = out["loss"] * float("nan")
        elif bad:  # finite value, NaN gradient
            w = m.patch_embed.proj.weight
            out["loss"] = out["loss"] + torch.sqrt((w - w.detach()).abs().sum())
        return out

    train_step(model, imgs, labels, opt, loss_fn, torch.bfloat16, guard=guard)  # warm-up
    before = [p.detach().clone() for p in model.parameters()]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            train_step(model, imgs, labels, opt, lambda m, x, y: loss_fn(m, x, y, bad=True), torch.bfloat16,
                       guard=guard)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert guard.read() == (2, 2)


def test_bf16_loss_error_is_within_twice_pytorchs_own():
    """Our model under bf16 autocast is no further from its fp32 loss than 2× the re-derived MAE's bf16 error."""
    kw = dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3, decoder_embed_dim=128,
              decoder_depth=2, decoder_num_heads=16, norm_pix_loss=True)
    from mimir_fast.models_mae import MaskedAutoencoderViT

    ours = MaskedAutoencoderViT(**kw).to(CUDA)
    ref = ReferenceMAE(**kw).to(CUDA)
    ref.load_state_dict(ours.state_dict())
    imgs = torch.rand(64, 3, 32, 32, device=CUDA)
    errs = {}
    for name, model in (("ours", ours), ("ref", ref)):
        torch.manual_seed(0)
        truth = model(imgs)[0].double()
        torch.manual_seed(0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(imgs)[0].double()
        errs[name] = (low - truth).abs().item()
    floor = torch.finfo(torch.bfloat16).eps * truth.abs().item()
    assert errs["ours"] <= 2 * errs["ref"] + floor, errs


def test_bf16_attack_gradients_do_not_underflow():
    """fp16 can underflow the attack's ∇x at large batches (docs/fidelity.md); bf16 keeps fp32's exponent range."""
    model = create_model("mae_vit_small", img_size=224, patch_size=16, norm_pix_loss=True).to(CUDA)
    imgs = torch.rand(256, 3, 224, 224, device=CUDA)
    x = imgs.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x)[0]
    (grad,) = torch.autograd.grad(loss, x)
    assert (grad == 0).float().mean().item() < 1e-3
    x_adv = pgd_mae(model, imgs, eps=8 / 255, alpha=10 / 255, steps=1)
    assert ((x_adv - imgs).abs() <= 8 / 255 + 1e-6).all()


def test_a_cuda_run_writes_a_checkpoint_that_loads_on_the_cpu(tmp_path):
    cfg = build_config("digits", epochs=1, output_dir=str(tmp_path), device="cuda")
    summary = run_pretrain(cfg)
    cpu_model = create_model(cfg.model, img_size=32, patch_size=4)
    ckpt = torch.load(summary.checkpoint, map_location="cpu", weights_only=True)
    cpu_model.load_state_dict(ckpt["model"], strict=True)
    assert summary.final_loss is not None and summary.img_per_sec > 0


def test_finetune_and_eval_on_cuda(tmp_path):
    from mimir_fast.evaluate.config import EvalConfig
    from mimir_fast.evaluate.run import run_eval
    from mimir_fast.methods import build_finetune_config, run_finetune

    ft = run_finetune(build_finetune_config("digits", epochs=1, device="cuda", output_dir=str(tmp_path / "ft")))
    report = run_eval(EvalConfig(resume=str(ft.checkpoint), attacks="clean,pgd20", n_ex=64, eps_curve="0,8,128",
                                 device="cuda", output_dir=str(tmp_path / "ev")))
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["eps0_equals_clean"] == "pass" and statuses["perturbation_within_eps"] == "pass"


@pytest.mark.parametrize("accum", [1, 2])
def test_cuda_graphed_step_gives_eagers_losses_and_gradients(accum, monkeypatch):
    """``--compile cudagraphs`` with inductor's ``fallback_random`` (eager's draws): the same losses and
    gradients as eager up to fp32 reassociation, gradient accumulation over graph replays included, and no
    CUDA-graph skips (a CPU tensor, an input mutation or a host sync in the forward would cause one)."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    from mimir_fast.train import compile as compile_module

    monkeypatch.setattr(compile_module, "BACKEND", "inductor")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cfg = build_config("digits", method="mimir", steps=2, batch_size=16)  # PGD-2: the attack graph replays
    with inductor_config.patch(fallback_random=True):  # (monkeypatch's undo would hide the option)
        eager, graphed = (compiled_step_grads(mode, cfg, CUDA, img_size=32, batch=16, accum=accum)
                          for mode in ("off", "cudagraphs"))
    assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == 0
    assert_same_losses_and_grads(graphed, eager)


def test_cuda_graphed_forward_draws_fresh_masks_on_every_replay():
    """Graph-safe RNG: a replayed graph advances the generator's Philox offset instead of repeating its draws."""
    import torch._dynamo

    from mimir_fast.train.compile import compile_model, mark_step_begin

    torch._dynamo.reset()
    model = create_model("mae_vit_micro", img_size=32, patch_size=4, norm_pix_loss=True).to(CUDA)
    step_model = compile_model(model, "cudagraphs")
    imgs = torch.rand(16, 3, 32, 32, device=CUDA)
    losses = []
    with torch.no_grad():
        for _ in range(4):  # warm-up and recording, then replays
            mark_step_begin(step_model)
            losses.append(step_model(imgs, 0.75)[0].clone())
    assert len(set(torch.stack(losses).tolist())) == 4


def test_cuda_graphed_training_steps_neither_recompile_nor_skip(monkeypatch):
    """Fused AdamW through the non-finite guard, PGD-1 and HSIC, bf16, static shapes: after the first steps the
    graphs are reused (no new Dynamo graph), and nothing falls back from CUDA graphs."""
    import torch._dynamo

    from mimir_fast.train.compile import compile_model
    from mimir_fast.train.nonfinite import NonFiniteGuard

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cfg = build_config("cifar10_vit_t", method="mimir", steps=1, batch_size=32)
    model = create_model(cfg.model, img_size=32, patch_size=2, norm_pix_loss=True).to(CUDA)
    opt = build_optimizer(param_groups_weight_decay(model, 0.05), 1e-4, (0.9, 0.95), CUDA)
    guard = NonFiniteGuard(opt, CUDA)
    step_model = compile_model(model, "cudagraphs")
    imgs, labels = torch.rand(32, 3, 32, 32, device=CUDA), torch.zeros(32, dtype=torch.long, device=CUDA)

    def loss_fn(m, x, y):
        return pretrain_losses(m, x, cfg)

    for _ in range(3):  # warm-up, recording
        train_step(step_model, imgs, labels, opt, loss_fn, torch.bfloat16, guard=guard)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for _ in range(3):
        losses = train_step(step_model, imgs, labels, opt, loss_fn, torch.bfloat16, guard=guard)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == 0
    assert torch.isfinite(losses["loss"]).item() and guard.read() == (0, 0)

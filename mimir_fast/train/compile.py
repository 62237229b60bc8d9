"""``--compile``: the model's forward under ``torch.compile``, optionally with CUDA graphs.

Only the module's forward is compiled. The attack's input gradients (``torch.autograd.grad``) and the
training backward run outside the compiled region: ``autograd.grad`` inside a compiled function is not
supported (pytorch#132929, performance-model.md §1e), while the backward of a compiled forward is itself
compiled by AOTAutograd. The attack's forward gets a graph of its own (eval mode, weights frozen by
``attacks.linf.attack_mode``), whose compiled backward computes the input gradient only. Under DDP the
attack runs on the wrapped module without gradient sync, so that module is compiled too
(``attack_target``). The optimizer is torch's fused AdamW kernel (``optim.build_optimizer``). HSIC runs
eagerly between the graphs (under 0.3 % of a step's FLOPs; its batched linear solve stays out of capture).

- ``auto`` (default): compiled on CUDA, eager on the CPU (inductor's CPU compile takes tens of seconds to
  start, more than a CPU demo run trains).
- ``on``: compiled with inductor, no CUDA graphs.
- ``cudagraphs``: inductor with ``mode="reduce-overhead"`` (CUDA graphs; CUDA only). Shapes are static, as
  graphs need: loaders drop the last partial batch and the number of kept tokens is fixed by the mask ratio.
- ``off``: eager.

The masks, drawn inside the compiled forward, come from inductor's own RNG: a compiled run is as random as an
eager one but does not draw the same numbers, and the eager draws after them (the attack's random starts)
differ too (``torch._inductor.config.fallback_random`` gives eager's numbers). Under CUDA graphs inductor's
draws advance the default generator's Philox offset on every replay (graph-safe). The compiled module shares
its parameters with the model; checkpoints save the model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError

BACKEND = "inductor"
"""The ``torch.compile`` backend; tests set ``aot_eager`` (the same graphs, no code generation)."""


def resolve_compile(mode: str, device: torch.device) -> str:
    """``auto`` → ``on`` on CUDA, ``off`` elsewhere; ``cudagraphs`` off CUDA is a ``ConfigError``."""
    if mode == "auto":
        return "on" if device.type == "cuda" else "off"
    if mode == "cudagraphs" and device.type != "cuda":
        raise ConfigError(f"compile 'cudagraphs' needs a CUDA device, but the run is on {device.type}")
    return mode


_ATTACK = "_mimir_fast_attack_module"


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """The module to call in the training step: ``model`` itself for ``off``, else its compiled forward
    (``mode`` already resolved by ``resolve_compile``). For a DDP ``model`` the wrapped module is compiled as
    well, for the attack (``attack_target``)."""
    if mode == "off":
        return model
    compiled = _compile(model, mode)
    if isinstance(model, DistributedDataParallel):  # kept out of nn.Module's registry: not a submodule
        object.__setattr__(compiled, _ATTACK, _compile(model.module, mode))
    return compiled


def _compile(model: nn.Module, mode: str) -> nn.Module:
    return torch.compile(model, backend=BACKEND, mode="reduce-overhead" if mode == "cudagraphs" else None)


def attack_target(model: nn.Module) -> nn.Module:
    """The module an attack inside the training step runs on, for the step's ``model`` (eager or compiled,
    maybe around DDP): the module inside DDP (the attack needs no gradient sync), compiled when the step
    is; otherwise ``model`` itself."""
    attack = model.__dict__.get(_ATTACK)
    if attack is not None:
        return attack
    return model.module if isinstance(model, DistributedDataParallel) else model


def mark_step_begin(model: nn.Module) -> None:
    """Tell CUDA-graph trees a new training step starts (outputs of the previous step's graphs may be
    overwritten); a no-op for an eager model."""
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        torch.compiler.cudagraph_mark_step_begin()

"""``--compile``: the model's forward under ``torch.compile`` (``on``), optionally with CUDA graphs
(``cudagraphs``), or eager (``off``); ``auto`` compiles on CUDA only. The attack's forward gets its own graph
(weights frozen by ``attacks.linf.attack_mode``); under DDP the inner module is compiled for it
(``attack_target``). docs/pretraining.md says what is compiled, what runs eagerly between the graphs, and why.
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

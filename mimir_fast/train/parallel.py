"""Data-parallel training under torchrun: the per-rank batch, the DDP or FSDP2 wrap, and full state dicts.

- ``--batch_size`` is per process (MAE's convention); ``--global_batch_size`` instead fixes the effective batch
  ``batch_size × accum_iter × world size`` and derives the per-process batch, which must come out whole.
- DDP (the default) keeps a full replica per rank and all-reduces gradients. ``--fsdp`` applies FSDP2's
  ``fully_shard`` to each transformer block (``blocks``, ``decoder_blocks``), then to the root.
- Checkpoints hold the full, unwrapped state in MAE's layout either way: under FSDP2 the model and optimizer
  states are gathered (a collective on every rank) and the optimizer's FQN keys are renumbered as
  ``Optimizer.state_dict`` numbers them.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..distributed import DistEnv
from ..errors import ConfigError


def per_rank_config(cfg, world_size: int):
    """``cfg`` with ``batch_size`` derived from ``global_batch_size`` (when given) for ``world_size`` processes."""
    if cfg.global_batch_size is None:
        return cfg
    parts = world_size * cfg.accum_iter
    if cfg.global_batch_size % parts:
        raise ConfigError(
            f"global_batch_size {cfg.global_batch_size} does not split over {world_size} processes x accum_iter "
            f"{cfg.accum_iter}: give a multiple of {parts}"
        )
    return replace(cfg, batch_size=cfg.global_batch_size // parts)


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device, fsdp: bool) -> nn.Module:
    """DDP (or FSDP2 with ``fsdp``) around ``model`` when there is more than one process; else ``model``."""
    if env.world_size == 1:
        if fsdp:
            print("fsdp: a single process has nothing to shard; training unwrapped")
        return model
    if not fsdp:
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for name in ("blocks", "decoder_blocks"):
        for block in getattr(model, name, ()):
            fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module without DDP's wrapper (FSDP2 shards in place, so its model is returned as is), also seen
    through a ``torch.compile`` wrapper: the module whose methods (``patchify``, ``forward_encoder``, ...) and
    state a caller wants."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, DistributedDataParallel) else model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict:
    """The unwrapped model's full state_dict (under FSDP2 a collective; full tensors on rank 0 only)."""
    if not is_fsdp(model):
        return unwrap(model).state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in ``Optimizer.state_dict``'s numbering."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's full state_dict with integer parameter ids, as a plain AdamW saves it (under FSDP2 a
    collective; full tensors on rank 0 only)."""
    if not is_fsdp(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, optimizer, options=_options())
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    return {
        "state": {index[name]: value for name, value in osd.get("state", {}).items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd.get("param_groups", [])],
    }


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full, integer-keyed optimizer state_dict (every rank passes the same one)."""
    if not is_fsdp(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _param_names(model, optimizer)
    try:
        osd = {
            "state": {names[i]: value for i, value in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
        }
    except (IndexError, KeyError, TypeError) as e:
        raise ValueError(f"parameter ids do not match the model ({e})") from None
    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))

"""Process-group setup from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), with SLURM's
``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID`` as a fallback. NCCL on CUDA, gloo on the CPU.

Under SLURM (``srun`` without torchrun) the rendezvous address is ``MASTER_ADDR``/``MASTER_PORT``, which
default to 127.0.0.1:29500 and must be exported for more than one node.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """The launcher's rank, world size and local rank (a single process when none is set)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistEnv()


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group when launched with more than one process; returns this process's place."""
    env = dist_env()
    if env.world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            if env.local_rank >= torch.cuda.device_count():
                from .errors import ConfigError

                raise ConfigError(f"local rank {env.local_rank} has no GPU: {torch.cuda.device_count()} visible "
                                  "(launch at most that many processes per node)")
            torch.cuda.set_device(env.local_rank)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env.rank,
                                world_size=env.world_size)
    return env


def local_device(device: torch.device, env: DistEnv) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` on CUDA (``cuda:0`` in a single process), else ``device``."""
    return torch.device("cuda", env.local_rank) if device.type == "cuda" else device


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the ranks (``t`` itself in a single process); a collective every rank must call.
    Sums then divides, as gloo has no AVG reduction."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    total = t.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


@contextlib.contextmanager
def quiet_unless_main(env: DistEnv):
    """Silence stdout on every rank but 0 (progress, notes); errors on stderr still show."""
    if env.is_main:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def gather(obj, env: DistEnv) -> list:
    """Every rank's ``obj``, in rank order (just ``[obj]`` in a single process)."""
    if env.world_size == 1:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def finish_distributed() -> None:
    """Wait for every rank, then leave the process group (a rank that exits early makes gloo abort its peers)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def abort_distributed() -> None:
    """Leave the process group without waiting for the other ranks (after an error: a barrier could hang);
    their next collective then fails and they exit too."""
    if dist.is_initialized():
        dist.destroy_process_group()

"""The five dispatched ops, each with what a check needs: how to build its inputs, its float64 truth, the path
``auto`` runs without the kernel, and the candidates that may replace that path.

One op, one name: the shapes, input factories and shape classes are the ones defined in ``mimir_fast/ops/<op>.py``
(the benchmark specs in bench/specs use them too).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch.nn.functional as F

from ._dispatch import forced

NAMES = ("patch_embed_visible", "decoder_unshuffle", "masked_mse_loss", "visible_attention", "hsic_gram")
"""Every dispatched op, in the order of a MIMIR step (encoder input, decoder input, loss, attention, HSIC)."""


@dataclass(frozen=True)
class OpEntry:
    """One dispatched op."""

    name: str
    """The op's name, as in kernels/, mimir_fast/ops/, tests/ops/ and bench/specs/."""
    fn: Callable
    """The public op (dispatches per call)."""
    truth: Callable
    """The reference in float64 (``<op>_ref`` on float64 inputs)."""
    reference: Callable
    """The path ``auto`` runs when no candidate is chosen (``<op>_ref``; plain SDPA for attention)."""
    shape_of: Callable[..., dict]
    """A call's sizes (the op's ``shape_of``)."""
    shape_class: Callable[[dict], str]
    """The records' class of a shape (the op's ``shape_class``)."""
    make_inputs: Callable
    """(shape, device, dtype, requires_grad) -> the op's positional inputs (the op's ``make_inputs``)."""
    grad_argnums: tuple[int, ...]
    """Inputs that take gradients."""
    shapes: dict[str, dict]
    """Named shapes: ``tiny`` for the CPU interpreter, the others the benchmark's."""
    sdpa_backends: tuple[str, ...] = ()
    """Further candidates besides the kernel (attention's SDPA backends)."""

    def candidates(self) -> dict[str, Callable]:
        """Candidate name -> the callable that runs it: ``triton`` (the op with its kernel forced) and the SDPA
        backends."""
        out = {"triton": _forced_triton(self.fn)}
        attention = importlib.import_module(f"{__package__}.visible_attention")
        out.update({name: attention.sdpa_backend(name) for name in self.sdpa_backends})
        return out


def _forced_triton(fn: Callable) -> Callable:
    def run(*args):
        with forced("triton"):
            return fn(*args)

    return run


def _entry(name: str) -> OpEntry:
    # the module, not the function of the same name that mimir_fast.ops re-exports
    module = importlib.import_module(f"{__package__}.{name}")
    attention = name == "visible_attention"
    return OpEntry(name=name, fn=getattr(module, name), truth=getattr(module, f"{name}_ref"),
                   reference=F.scaled_dot_product_attention if attention else getattr(module, f"{name}_ref"),
                   shape_of=module.shape_of, shape_class=module.shape_class, make_inputs=module.make_inputs,
                   grad_argnums=module.GRAD_ARGNUMS, shapes=module.SHAPES,
                   sdpa_backends=tuple(module.SDPA_BACKENDS) if attention else ())


OPS: dict[str, OpEntry] = {name: _entry(name) for name in NAMES}
"""Every dispatched op by name, in ``NAMES`` order."""

"""Skipping the updates of non-finite steps without a host sync.

A step whose loss (any micro-batch of it) or gradients are NaN or inf leaves the parameters and the optimizer
state unchanged. The decision is a device tensor, ``found_inf`` (1.0 = skip), all-reduced across ranks; counters
of skipped updates stay on the device and are read at the trainer's print points. Zeroing the gradients instead
would not skip the update: AdamW would still decay the weights and the moments.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours ``optimizer.found_inf`` (torch's fused Adam/AdamW/SGD)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        g.get("fused") for g in optimizer.param_groups
    )


class NonFiniteGuard:
    """Wraps ``optimizer.step`` so that non-finite steps are skipped and counted on ``device``.

    Call ``observe(loss)`` on each micro-batch's loss and ``step()`` in place of ``optimizer.step()``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device):
        self.optimizer = optimizer
        self.fused = supports_found_inf(optimizer)
        self.found_inf = torch.zeros((), device=device)
        """() float32: 1.0 when the pending update is to be skipped."""
        self.counters = torch.zeros(3, device=device)
        """(3,) float32: updates skipped, current run of consecutive skipped updates, longest run."""
        self._one = torch.ones((), device=device)

    def observe(self, loss: torch.Tensor) -> None:
        """Mark the pending update for skipping if the scalar ``loss`` is not finite."""
        torch.maximum(self.found_inf, (~torch.isfinite(loss.detach())).float(), out=self.found_inf)

    def step(self) -> None:
        """The optimizer step, skipped when the observed losses or the gradients are non-finite."""
        grads = defaultdict(list)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grads[(p.grad.device, p.grad.dtype)].append(p.grad)
        for (device, _), gs in grads.items():  # sets found_inf on non-finite grads; scale 1 leaves them as they are
            found = self.found_inf if device == self.found_inf.device else torch.zeros_like(self.found_inf)
            torch._amp_foreach_non_finite_check_and_unscale_(gs, found, self._one.to(device))
            if found is not self.found_inf:
                torch.maximum(self.found_inf, found.to(self.found_inf.device), out=self.found_inf)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # a decision every replica shares (a collective on the device, no host read)
            torch.distributed.all_reduce(self.found_inf, op=torch.distributed.ReduceOp.MAX)
        if self.fused:
            self.optimizer.found_inf = self.found_inf
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        else:
            self._step_and_restore()
        found = self.found_inf
        skipped, run, longest = self.counters.unbind()
        skipped.add_(found)
        run.mul_(found).add_(found)  # (run + 1) if skipped, else 0
        torch.maximum(longest, run, out=longest)
        self.found_inf.zero_()

    def _step_and_restore(self) -> None:
        opt = self.optimizer
        params = [p for g in opt.param_groups for p in g["params"]]
        before = {id(t): (t, t.detach().clone()) for t in _state_tensors(opt) + params}
        opt.step()
        for t in _state_tensors(opt) + params:
            old = before[id(t)][1] if id(t) in before else torch.zeros_like(t)
            skip = self.found_inf.to(t.device).bool()
            with torch.no_grad():
                t.copy_(torch.where(skip, old, t))

    def read(self) -> tuple[int, int]:
        """(updates skipped, longest run of consecutive skipped updates) so far: a host read."""
        skipped, _, longest = self.counters.tolist()
        return int(skipped), int(longest)


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor in the per-parameter state and in the groups (apex keeps ``step`` per group)."""
    out = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    out += [v for g in optimizer.param_groups for k, v in g.items() if k != "params" and torch.is_tensor(v)]
    return out

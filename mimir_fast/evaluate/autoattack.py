"""AutoAttack with the semantics of fra31/auto-attack, built from torchattacks' attack classes.

``build_attacks`` configures them as fra31's ``standard`` (APGD-CE, APGD-T with 9 targets, FAB-T, Square with
5,000 queries) or ``rand`` (APGD-CE and APGD-DLR with EOT-20) versions; ``run_autoattack`` is fra31's driver
(clean-correct points attacked in turn, chunks of ``bs`` re-seeded, the worst case per example). torchattacks'
own wrapper is not used: docs/finetuning.md says why and how the match with fra31 is checked.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}


def build_attacks(model: nn.Module, version: str, eps: float, num_classes: int, seed: int = 0) -> list[tuple]:
    """``[(name, attack)]`` for fra31's ``version`` at L∞ radius ``eps`` (pixel units)."""
    try:
        import torchattacks
    except ImportError:
        raise ConfigError(
            "AutoAttack needs torchattacks: pip install --no-deps torchattacks==3.5.1"
        ) from None
    n_cls = min(num_classes, 10)  # torchattacks attacks n_cls - 1 targets: fra31's 9
    common = dict(norm="Linf", eps=eps, seed=seed)
    if version == "standard":
        return [
            ("apgd-ce", torchattacks.APGD(model, steps=100, n_restarts=1, loss="ce", eot_iter=1, rho=0.75, **common)),
            ("apgd-t", torchattacks.APGDT(model, steps=100, n_restarts=1, eot_iter=1, rho=0.75, n_classes=n_cls,
                                          **common)),
            ("fab-t", torchattacks.FAB(model, steps=100, n_restarts=1, multi_targeted=True, n_classes=n_cls,
                                       alpha_max=0.1, eta=1.05, beta=0.9, **common)),
            ("square", torchattacks.Square(model, n_queries=5000, n_restarts=1, p_init=0.8, loss="margin",
                                           resc_schedule=False, **common)),
        ]
    if version == "rand":
        return [
            ("apgd-ce", torchattacks.APGD(model, steps=100, n_restarts=1, loss="ce", eot_iter=20, rho=0.75, **common)),
            ("apgd-dlr", torchattacks.APGD(model, steps=100, n_restarts=1, loss="dlr", eot_iter=20, rho=0.75,
                                           **common)),
        ]
    raise ConfigError(f"unknown AutoAttack version {version!r}; choose one of: {', '.join(VERSIONS)}")


def run_autoattack(
    model: nn.Module, attacks: list[tuple], x: torch.Tensor, y: torch.Tensor, bs: int = 250,
    attack_all: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, float]]]:
    """fra31's driver. x (N, C, H, W) float32 in [0, 1], y (N,) int64.

    Returns ``robust`` (N,) bool, ``x_adv`` (N, C, H, W) (the first successful adversarial example of each
    broken point, the clean image otherwise) and the number of robust points after each attack,
    ``[(name, count)]``.

    ``attack_all`` is for a randomised model whose accuracy is scored afterwards over several draws: fra31
    decides on single draws which points to attack (those one draw classifies right) and which adversarial
    examples to keep (those one draw misclassifies), so a point one draw got wrong by chance would be scored
    on its clean image, and a perturbation that fools most draws but not the checking one would be dropped.
    With ``attack_all`` every point is attacked and keeps the latest attack's output (points flagged as
    fooled still leave the later attacks, as in fra31).
    """
    x, y = x.float(), y.long()
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        if attack_all:
            robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        else:
            robust = torch.cat([model(x[i:i + bs]).argmax(1) == y[i:i + bs] for i in range(0, len(x), bs)])
        x_adv = x.clone()
        after = []
        for name, attack in attacks:
            idx = robust.nonzero().flatten()
            for i in range(0, idx.numel(), bs):
                b = idx[i:i + bs]
                with torch.enable_grad():
                    adv = attack(x[b], y[b])
                fooled = model(adv).argmax(1) != y[b]
                robust[b[fooled]] = False
                if attack_all:
                    x_adv[b] = adv
                else:
                    x_adv[b[fooled]] = adv[fooled]
            after.append((name, int(robust.sum())))
    return robust, x_adv, after

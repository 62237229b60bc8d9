"""AutoAttack: fra31's configuration (attacks, iterations, targets) and driver semantics.

``test_matches_fra31_bit_for_bit`` runs only where fra31/auto-attack is importable (it is not on PyPI:
``PYTHONPATH=/path/to/auto-attack pytest tests/test_autoattack.py``).
"""

import pytest
import torch
from torch import nn

from mimir_fast.evaluate.autoattack import VERSIONS, build_attacks, run_autoattack
from tests.helpers import small_cnn

torchattacks = pytest.importorskip("torchattacks")


@pytest.mark.parametrize("num_classes,targets", [(10, 9), (1000, 9), (100, 9), (5, 4)])
def test_standard_configuration_is_fra31s(num_classes, targets):
    attacks = build_attacks(small_cnn(num_classes), "standard", 8 / 255, num_classes, seed=0)
    assert [name for name, _ in attacks] == list(VERSIONS["standard"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    apgd, apgdt, fab, square = (a for _, a in attacks)
    # torchattacks keeps rho as thr_decr and resc_schedule as rescale_schedule
    assert type(apgd) is torchattacks.APGD and (apgd.steps, apgd.n_restarts, apgd.loss, apgd.eot_iter,
                                                apgd.thr_decr) == (100, 1, "ce", 1, 0.75)
    assert type(apgdt) is torchattacks.APGDT and (apgdt.steps, apgdt.n_restarts, apgdt.eot_iter, apgdt.thr_decr) == (
        100, 1, 1, 0.75)
    assert apgdt.n_target_classes == targets and fab.n_target_classes == targets
    assert type(fab) is torchattacks.FAB and fab.multi_targeted and (fab.steps, fab.n_restarts) == (100, 1)
    assert (fab.alpha_max, fab.eta, fab.beta) == (0.1, 1.05, 0.9)
    assert type(square) is torchattacks.Square and (square.n_queries, square.n_restarts, square.p_init) == (
        5000, 1, 0.8)
    assert square.rescale_schedule is False and square.loss == "margin"
    for _, a in attacks:
        assert a.norm == "Linf" and a.eps == 8 / 255 and a.seed == 0


def test_rand_configuration_is_fra31s():
    attacks = build_attacks(small_cnn(), "rand", 4 / 255, 10, seed=0)
    assert [name for name, _ in attacks] == ["apgd-ce", "apgd-dlr"]
    for (_, a), loss in zip(attacks, ("ce", "dlr")):
        assert (a.steps, a.n_restarts, a.eot_iter, a.loss, a.thr_decr) == (100, 1, 20, loss, 0.75)


class Stub:
    """An 'attack' that records the points it was given and flips the label of chosen ones."""

    def __init__(self, breaks):
        self.breaks, self.seen = set(breaks), []

    def __call__(self, x, y):
        self.seen.append(x[:, 0, 0, 0].round().long().tolist())
        out = x.clone()
        for row, idx in enumerate(x[:, 0, 0, 0].round().long().tolist()):
            if idx in self.breaks:
                out[row, 1] = 1.0  # a marker the stub model reads as "predict class 1"
        return out


class IndexModel(nn.Module):
    """Predicts class 1 when channel 1 is set, otherwise class 0."""

    def forward(self, x):
        hit = x[:, 1].flatten(1).amax(1) > 0.5
        return torch.stack([(~hit).float(), hit.float()], dim=1)


def test_driver_attacks_only_robust_points_in_chunks_and_keeps_the_worst_case():
    n = 7
    x = torch.zeros(n, 3, 2, 2)
    x[:, 0] = torch.arange(n, dtype=torch.float32).view(n, 1, 1)  # channel 0 carries the example index
    y = torch.zeros(n, dtype=torch.long)
    y[6] = 1  # misclassified before any attack
    first, second = Stub(breaks={0, 3}), Stub(breaks={4})
    robust, x_adv, after = run_autoattack(IndexModel(), [("a", first), ("b", second)], x, y, bs=2)
    assert first.seen == [[0, 1], [2, 3], [4, 5]]  # clean-correct points only, chunks of bs
    assert second.seen == [[1, 2], [4, 5]]  # the points a broke are not attacked again
    assert robust.tolist() == [False, True, True, False, False, True, False]
    assert after == [("a", 4), ("b", 3)]
    assert x_adv[0, 1].max() == 1 and x_adv[1, 1].max() == 0  # broken points carry their adversarial image


def test_driver_restores_the_global_rng():
    model = small_cnn()
    x = torch.rand(6, 3, 16, 16)
    y = model(x).argmax(1)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    run_autoattack(model, build_attacks(model, "rand", 2 / 255, 10, seed=0)[:1], x, y)
    assert torch.equal(torch.rand(3), expected)


def test_matches_fra31_bit_for_bit():
    autoattack = pytest.importorskip("autoattack", reason="fra31/auto-attack is not installed")
    model = small_cnn()
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(24, 3, 16, 16, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # some clean-misclassified points
    for version in ("standard", "rand"):
        for bs in (250, 8):
            ref = autoattack.AutoAttack(model, norm="Linf", eps=2 / 255, version=version, seed=0, device="cpu",
                                        verbose=False).run_standard_evaluation(x.clone(), y.clone(), bs=bs)
            _, ours, _ = run_autoattack(model, build_attacks(model, version, 2 / 255, 10, seed=0), x, y, bs=bs)
            assert torch.equal(ours, ref), (version, bs)

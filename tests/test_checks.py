"""The integrity checks on constructed evaluation results: each passes on a sound evaluation and fails on the
fault it is there to catch, at its threshold."""

import math

import pytest

from mimir_fast.evaluate.checks import run_checks, sampling_slack
from mimir_fast.evaluate.config import EvalConfig

N = 20  # examples: accuracies are multiples of 5%
EPS = 8 / 255


def _sound():
    """What a sound evaluation of 20 examples at ε = 8/255 could report (run_checks' arguments after ``cfg``)."""
    clean = [1] * 12 + [0] * 8  # 60%
    return {
        "accuracy": {"clean": 60.0, "curve:0": 60.0, "curve:4": 45.0, "curve:8": 35.0, "curve:128": 0.0,
                     "pgd20": 35.0, "pgd100": 35.0, "aa": 30.0},
        "per_example": {"clean": clean, "curve:0": list(clean)},
        "n": N,
        "zero_grad": 0,
        "aa_after": {"aa": [("apgd-ce", 31.0), ("apgd-t", 30.5), ("fab-t", 30.125), ("square", 30.0)]},
        "max_perturbation": {"curve:0": 0.0, "curve:4": 4 / 255, "curve:8": EPS, "curve:128": 128 / 255,
                             "pgd20": EPS, "pgd100": EPS, "aa": EPS},
    }


def _checks(results=None, eps_curve="0,4,8,128", randomized=False):
    cfg = EvalConfig(resume="c", eps=8, eps_curve=eps_curve)
    results = results or _sound()
    return {c["name"]: c for c in run_checks(cfg, **results, randomized=randomized)}


def _status(results=None, **kw):
    return {name: c["status"] for name, c in _checks(results, **kw).items()}


def test_a_sound_evaluation_passes_every_check():
    assert _status() == dict.fromkeys(["eps0_equals_clean", "monotone_in_eps", "autoattack_le_pgd",
                                       "large_eps_breaks_model", "gradients_flow", "square_adds_little",
                                       "perturbation_within_eps"], "pass")


def test_eps0_fails_when_one_prediction_changes_at_eps_0():
    results = _sound()
    results["per_example"]["curve:0"][3] = 0
    check = _checks(results)["eps0_equals_clean"]
    assert check["status"] == "fail" and check["detail"] == "1 of 20 predictions differ between clean and PGD at eps 0"
    results["per_example"]["curve:0"][15] = 1  # two compensating flips: the accuracy agrees, the check does not
    assert sum(results["per_example"]["curve:0"]) == sum(results["per_example"]["clean"])
    assert _checks(results)["eps0_equals_clean"]["status"] == "fail"
    del results["per_example"]["curve:0"]
    assert _status(results, eps_curve="4,8,128")["eps0_equals_clean"] == "skipped"


@pytest.mark.parametrize("rise", [5.0, 0.01])
def test_monotone_fails_on_a_curve_that_rises(rise):
    results = _sound()
    results["accuracy"]["curve:8"] = 45.0 + rise  # above the value at 4/255
    check = _checks(results)["monotone_in_eps"]
    assert check["status"] == "fail" and check["detail"] == f"45.00% at 4 < {45 + rise:.2f}% at 8"
    results["accuracy"]["curve:8"] = 45.0  # flat is not a rise
    assert _checks(results)["monotone_in_eps"]["status"] == "pass"
    assert _status(eps_curve="8")["monotone_in_eps"] == "skipped"


def test_a_randomised_defence_may_rise_by_two_standard_errors_only():
    slack = sampling_slack(50.0, N, True)
    assert slack == pytest.approx(200 * math.sqrt(0.5 * 0.5 / N)) and sampling_slack(50.0, N, False) == 0.0
    results = _sound()
    results["accuracy"]["curve:8"] = 50.0  # 5 points above 4/255, within 2 se (22.4 points) at n = 20
    assert _status(results, randomized=True)["monotone_in_eps"] == "pass"
    assert _status(results, randomized=False)["monotone_in_eps"] == "fail"  # deterministic: no slack
    results["accuracy"]["curve:8"] = 70.0  # 25 points above, beyond 2 se at 70% (20.5 points)
    assert 25 > sampling_slack(70.0, N, True)
    assert _status(results, randomized=True)["monotone_in_eps"] == "fail"


@pytest.mark.parametrize("key,value,status", [
    ("aa", 35.0, "pass"),  # equal to PGD
    ("aa", 35.5, "fail"),
    ("aa-rand", 36.0, "fail"),
])
def test_autoattack_must_not_beat_pgd(key, value, status):
    results = _sound()
    results["accuracy"][key] = value
    assert _status(results)["autoattack_le_pgd"] == status


def test_autoattack_is_compared_with_the_strongest_pgd():
    results = _sound()
    results["accuracy"].update(pgd20=36.0, pgd100=33.0, aa=34.0)  # below PGD-20, above PGD-100
    check = _checks(results)["autoattack_le_pgd"]
    assert check["status"] == "fail" and check["detail"] == "AutoAttack 34.00% vs PGD 33.00%"
    del results["accuracy"]["aa"]
    assert _status(results)["autoattack_le_pgd"] == "skipped"


@pytest.mark.parametrize("acc,status", [(0.0, "pass"), (5.0, "pass"), (10.0, "fail")])
def test_large_eps_must_break_the_model(acc, status):
    results = _sound()
    results["accuracy"]["curve:128"] = acc
    check = _checks(results)["large_eps_breaks_model"]
    assert check["status"] == status and check["detail"].startswith(f"{acc:.2f}% accuracy at eps 128/255")
    assert _status(eps_curve="0,4,8")["large_eps_breaks_model"] == "skipped"  # no radius >= 64


@pytest.mark.parametrize("zero_grad,status", [(0, "pass"), (2, "pass"), (3, "fail"), (20, "fail")])
def test_gradients_must_flow(zero_grad, status):
    results = {**_sound(), "zero_grad": zero_grad}  # 2 of 20 is 10%, the most allowed
    assert _status(results)["gradients_flow"] == status


@pytest.mark.parametrize("square_after,status", [(30.125, "pass"), (29.875, "fail"), (25.0, "fail")])
def test_square_must_add_little_after_the_gradient_attacks(square_after, status):
    results = _sound()  # 30.125% after APGD-CE, APGD-T and FAB-T: Square may remove 0.2 points
    results["aa_after"]["aa"][3] = ("square", square_after)
    assert _status(results)["square_adds_little"] == status
    assert _status({**results, "aa_after": {}})["square_adds_little"] == "skipped"


@pytest.mark.parametrize("key,value,status", [
    ("curve:8", EPS + 1e-7, "pass"),  # fp32 rounding of x + δ − x
    ("curve:8", EPS + 1 / 255, "fail"),
    ("pgd100", EPS + 1 / 255, "fail"),
    ("aa", EPS + 1 / 255, "fail"),
    ("curve:4", 8 / 255, "fail"),  # within the evaluation's ε, not within this radius's
    ("curve:128", 128 / 255, "pass"),
])
def test_perturbations_must_stay_within_their_eps(key, value, status):
    results = _sound()
    results["max_perturbation"][key] = value
    check = _checks(results)["perturbation_within_eps"]
    assert check["status"] == status
    assert check["detail"] == ("all within eps" if status == "pass" else f"{key}: {value:.4f}")

"""Calibration of the verdict under null worlds built to fool it, and its power under planted sharing.

The worlds are `analysis.calibration` (seeded); the call is `verdict.decide`, the function the pipeline uses.
`benchmarks/calibration.py` prints the same numbers at 1,000 replicates. Here: 300 replicates per null world, so a
test rejecting at exactly 5 % has binomial SE 1.26 %; the bounds 1.5–9.5 % sit 2.75 SE each side of 5 % (a valid
test fails them with probability < 1 %, a test at the 7–14 % the plain Mantel showed under lookups fails them
mostly). The false-call bounds are one-sided at 5 % + 2.3 SE.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.config import default_decision_rule
from analysis.datasets import calibration, known_answers
from analysis.stats import routing

N_REPLICATES = 300
N_PERMUTATIONS = 299  # a valid test at α = 0.05 rejects exactly 14/300 = 4.7 %
RULE = default_decision_rule()
TESTS_FEEDING_THE_CALL = ("Mantel (studentized)", "cluster contrast (studentized)")
NULLS = tuple(w for w in calibration.NULL_WORLDS if w != "shared-cause")


@pytest.fixture(scope="module", params=NULLS)
def null_rates(request):
    rates = calibration.rates(request.param, N_REPLICATES, N_PERMUTATIONS, RULE, seed=0)
    print(rates.summary())
    return rates


@pytest.mark.slow
def test_every_test_that_feeds_the_call_keeps_its_level(null_rates):
    for name in TESTS_FEEDING_THE_CALL:
        assert 0.015 <= null_rates.rejections[name] <= 0.095, null_rates.summary()


@pytest.mark.slow
def test_no_null_world_gets_a_positive_call(null_rates):
    assert null_rates.calls["positive"] <= 0.08, null_rates.summary()


@pytest.mark.slow
def test_pair_level_wilcoxon_is_anti_conservative_under_hub_effects():
    """The seed's rank-sum test treats pairs as independent; KD hub effects make pairs that share a KD dependent."""
    rates = calibration.rates("independent", N_REPLICATES, N_PERMUTATIONS, RULE, seed=1)
    assert rates.rejections["pair-level rank-sum"] > 0.10, rates.summary()


@pytest.mark.slow
@pytest.mark.parametrize("world", list(calibration.ALTERNATIVES))
def test_planted_partial_sharing_is_never_called_negative(world):
    """True r above the smallest effect of interest: "negative" would be a false call (it needs equivalence)."""
    rates = calibration.rates(world, N_REPLICATES, N_PERMUTATIONS, RULE, seed=0)
    print(rates.summary())
    assert rates.mean_r > RULE.equivalence_r
    assert rates.calls["negative"] <= 0.08, rates.summary()
    assert rates.rejections["Mantel (studentized)"] > 0.5, rates.summary()  # power is reported, and not trivial


def test_plain_mantel_would_be_liberal_where_the_studentized_one_is_not():
    """Why studentize: under heteroscedastic lookups the plain permutation null is too narrow for r (a raw-r
    permutation test from the same permutations rejects more often than the studentized one)."""
    rng = np.random.default_rng(5)
    plain = studentized = 0
    for _ in range(200):
        w = calibration.draw_world(rng, "lookup-hetero")
        test = routing.mantel(w.c_out, w.c_jac, 199, 0)
        studentized += test.p_value < 0.05
        raw_null = [routing.pearson(w.c_out, w.c_jac[np.ix_(p, p)]) for p in next(routing.permutations(len(w.labels), 199, 0, 199))]
        plain += (1 + np.sum(np.asarray(raw_null) >= test.statistic)) / 200 < 0.05
    print(f"lookup-hetero, 200 replicates: plain Mantel {plain / 200:.1%}, studentized {studentized / 200:.1%}")
    assert plain > studentized


@pytest.mark.parametrize("kind", ["positive", "negative", "random", "keyed", "degenerate"])
def test_planted_known_answers_get_their_calls_across_seeds(kind):
    """The decision rule on the analytic C_out / C_jac of each known-answer model over 10 geometry seeds."""
    rates = calibration.known_answer_calls(kind, 10, N_PERMUTATIONS, RULE)
    print(rates.summary())
    expected = known_answers.EXPECTED_CALLS[kind]
    if kind == "negative":  # equivalence is shown on most geometries at K = 116 (the rest: inconclusive, never B)
        assert rates.calls["negative"] >= 0.5, rates.summary()
        expected = expected | {"inconclusive"}
    assert sum(rates.calls[c] for c in expected) == 1.0, rates.summary()

"""Null calibration of the Part 3 tests: how often they reject at α = 0.05 when routing does not track outputs.

The nulls are `analysis.known_answers.null_replicate` (seeded, deterministic); `benchmarks/calibration.py`
prints the same numbers. About 80 s on 2 CPU cores.
"""

from __future__ import annotations

import pytest

from analysis import known_answers

N_REPLICATES = 1000
N_PERMUTATIONS = 299  # exact rejection rate of a valid test at α = 0.05: 14/300 = 4.7 %


@pytest.fixture(scope="module")
def independent():
    rates = known_answers.null_rejection_rates("independent", N_REPLICATES, N_PERMUTATIONS, seed=0)
    print(rates.summary())
    return rates


def test_mantel_test_is_calibrated(independent):
    assert 0.03 <= independent.mantel <= 0.07, independent.summary()


def test_cluster_label_permutation_test_is_calibrated(independent):
    assert 0.03 <= independent.cluster_permutation <= 0.07, independent.summary()


def test_pair_level_wilcoxon_is_anti_conservative(independent):
    """The seed's rank-sum test treats pairs as independent; KD hub effects make pairs that share a KD dependent."""
    print(f"pair-level Wilcoxon rejects {independent.rank_sum:.1%} of null replicates at α = 0.05")
    assert independent.rank_sum > 0.10, independent.summary()


def test_verdict_rarely_calls_positive_under_the_null(independent):
    assert independent.calls["positive"] <= 0.05, independent.summary()


def test_cluster_label_permutation_test_is_calibrated_under_a_lookup_null():
    """Model A's lookup: equal means, unequal spread. The studentized statistic keeps the level."""
    rates = known_answers.null_rejection_rates("lookup", 400, N_PERMUTATIONS, seed=0)
    print(rates.summary())
    assert 0.03 <= rates.cluster_permutation <= 0.07, rates.summary()

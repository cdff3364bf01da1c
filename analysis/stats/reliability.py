"""The noise floor from the model itself: how well C_out and C_jac^spec reproduce across independent control draws.

The R control-cell draws are split into two halves; each half gives its own ΔY (C_out) and its own Jacobians (the
half's Gram, so its own C_jac^spec through `decompose`). As rsatoolbox's split-half noise ceiling does it,
the reliability of a similarity matrix is the Pearson r between the two halves' upper triangles stepped up by
Spearman–Brown to the full R draws, 2r / (1 + r); a correlation between two matrices is corrected for attenuation by
dividing it by the square root of the product of their reliabilities (Spearman 1904). KD-specific routing whose
reliability is below `DecisionRule.min_reliability` is mostly draw-to-draw noise: the verdict calls it
"unreliable" rather than reading it as cluster circuits or per-KD routing.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..results import NoiseFloor, RoutingEvidence
from .clustering import cosine_similarity
from .decomposition import decompose
from .gram import stream_gram
from .pairs import block_reader, jackknife_se, pair_sums, pearson_and_leave_one_out


def split_half_r(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """Pearson r between the upper triangles of two [K, K] matrices and its delete-one-KD jackknife SE."""
    r, loo = pearson_and_leave_one_out(*pair_sums(block_reader(first), block_reader(second), len(first)))
    return float(r), float(jackknife_se(loo))


def spearman_brown(r: float) -> float:
    """The reliability of the whole from the correlation r of its two halves: 2r / (1 + r) (NaN for r ≤ −1)."""
    return 2 * r / (1 + r) if r > -1 else float("nan")


def corrected_for_attenuation(r: float, reliability_a: float, reliability_b: float) -> float:
    """r / √(rel_a · rel_b); NaN when either reliability is not positive (the correction is undefined)."""
    if not (reliability_a > 0 and reliability_b > 0):
        return float("nan")
    return float(r / np.sqrt(reliability_a * reliability_b))


def noise_floor(c_out_halves: tuple[np.ndarray, np.ndarray], gram_halves: tuple[np.ndarray, np.ndarray],
                half_draws: tuple[int, int], mantel_r: float) -> NoiseFloor:
    """Split-half reliabilities of C_out (from each half's ΔY, [K, K] cosines) and of C_jac^spec (from each half's
    Jacobian Gram [K, K]), and `mantel_r` (the deciding r(C_out, C_jac^spec) of all draws) corrected for attenuation."""
    r_out, se_out = split_half_r(*c_out_halves)
    r_jac, se_jac = split_half_r(*(decompose(gram)[1] for gram in gram_halves))
    rel_out, rel_jac = spearman_brown(r_out), spearman_brown(r_jac)
    return NoiseFloor(tuple(int(n) for n in half_draws), r_out, se_out, r_jac, se_jac, rel_out, rel_jac,
                      corrected_for_attenuation(mantel_r, rel_out, rel_jac))


def with_noise_floor(evidence: RoutingEvidence, c_out_halves, gram_halves, half_draws) -> RoutingEvidence:
    """`evidence` with its noise floor (`noise_floor`); unchanged when there are no halves (None: one draw)."""
    if c_out_halves is None or gram_halves is None:
        return evidence
    return replace(evidence, noise_floor=noise_floor(c_out_halves, gram_halves, half_draws,
                                                     evidence.mantel_pearson.statistic))



def halves(shards, delta_y_draws: np.ndarray) -> tuple:
    """(C_out of each half's ΔY, Gram of each half's Jacobians, draws per half) for `with_noise_floor`, split as
    the Jacobian shards split the draws (`store.shards.JacobianShards.halves`); (None, None, None) with one draw.
    delta_y_draws [R, K, G]. Cost: two more streamed Grams, each reading J and the halves' difference."""
    readers = shards.halves()
    if readers is None:
        return None, None, None
    first = shards.half_draws[0]
    c_out = tuple(cosine_similarity(draws.mean(axis=0)) for draws in (delta_y_draws[:first], delta_y_draws[first:]))
    return c_out, tuple(stream_gram(reader) for reader in readers), shards.half_draws

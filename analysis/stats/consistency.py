"""Routing across cell lines: is a KD's routing more consistent between lines than its output?

The seed's NB04 found that in-silico knock-outs barely agree between cell lines (mean cross-line r = 0.057):
input routing is not backbone-level. For every KD analysed in two lines (same model, each line's own control
cells) this stage measures the cosine of its ΔY_k between the lines and the cosine of its Jacobian J_k
(flattened G × H) between the lines.

Raw cosines mislead when one quantity has a large component common to all KDs: Jacobians typically do (the mean
C_jac within a line is often above 0.5), so J_k in one line resembles *every* KD's J in the other, and a high cos J
says little about KD k. Each cosine is therefore also read against its baseline, the KD's mean cosine with the
other KDs across the lines: specific = matched − baseline. The comparison that answers the question is
d_k = specific cos J − specific cos ΔY (positive: the model keeps a KD's own routing across lines more than its
own response); the raw difference cos J − cos ΔY is reported beside it.

Inference on the mean of d: KDs of one output cluster share their responses, so their d's are dependent and a
KD-level test would count each cluster many times. The units are the primary line's output clusters (the
weak-effect group is one unit too). Under H0 each cluster's sum of d is symmetric about 0 and clusters are
independent, and the sign-flip distribution of the cluster sums is exact (every sign pattern enumerated up to
2^16 of them, a seeded sample beyond). The 95% interval resamples clusters (percentile bootstrap).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics.pairwise import cosine_similarity

from ..results import PairedDifference
from .gram import stream_gram

MAX_ENUMERATED_UNITS = 16  # 2^16 sign patterns; beyond, a Monte Carlo sample


def common_kds(primary: tuple, other: tuple) -> tuple:
    """The KDs analysed in both lines, in the primary line's order."""
    present = set(other)
    return tuple(k for k in primary if k in present)


def cosines_from_products(products: np.ndarray, norms_a: np.ndarray, norms_b: np.ndarray) -> np.ndarray:
    """Inner products [K_a, K_b] and the rows' norms -> cosines (0 where a norm is 0)."""
    outer = np.outer(norms_a, norms_b)
    return np.where(outer > 0, products / np.maximum(outer, 1e-300), 0.0)


def matched_and_baseline(cosines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a square [K, K] cross-line cosine matrix in matched KD order: the diagonal (each KD with itself in the other
    line) and each KD's mean cosine with the other K − 1 KDs (both directions averaged)."""
    n = len(cosines)
    off = cosines.sum(axis=1) + cosines.sum(axis=0) - 2 * np.diag(cosines)
    return np.diag(cosines).copy(), off / (2 * (n - 1))


def sign_flip_p(unit_sums: np.ndarray, n_permutations: int, seed: int,
                one_sided: bool = False) -> tuple[float, int, bool]:
    """p of Σ unit_sums against its sign-flip distribution: (p, patterns used, exact). Two-sided, or one-sided
    (Σ > 0) with `one_sided`.

    Exact (all 2^C patterns, the observed one included) for C ≤ MAX_ENUMERATED_UNITS units, else
    `n_permutations` seeded patterns with the +1 correction.
    """
    fold = (lambda x: x) if one_sided else np.abs
    observed = fold(unit_sums.sum())
    tolerance = 1e-12 * max(np.abs(unit_sums).sum(), 1e-300)  # ties within rounding count as extreme
    if len(unit_sums) <= MAX_ENUMERATED_UNITS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(unit_sums))))
        extreme = fold(signs @ unit_sums) >= observed - tolerance
        return float(extreme.mean()), len(signs), True
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_permutations, len(unit_sums)))
    extreme = fold(signs @ unit_sums) >= observed - tolerance
    return float((1 + extreme.sum()) / (n_permutations + 1)), n_permutations, False


def cluster_bootstrap_interval(unit_sums: np.ndarray, unit_sizes: np.ndarray, n_bootstrap: int, seed: int,
                               confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the KD-level mean Σ sums / Σ sizes when the units (clusters) are resampled."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(unit_sums), size=(n_bootstrap, len(unit_sums)))
    means = unit_sums[draws].sum(axis=1) / unit_sizes[draws].sum(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_difference(difference: np.ndarray, units: np.ndarray, line_a: str, line_b: str, measure: str,
                      n_permutations: int, n_bootstrap: int, seed: int, alpha: float) -> PairedDifference:
    """Cluster-level inference for the mean of `difference` [K] (d_k), `units` [K] the cluster of each KD."""
    labels, index = np.unique(units, return_inverse=True)
    unit_sums = np.bincount(index, weights=difference, minlength=len(labels))
    unit_sizes = np.bincount(index, minlength=len(labels)).astype(np.float64)
    p, n_patterns, exact = sign_flip_p(unit_sums, n_permutations, seed)
    low, high = cluster_bootstrap_interval(unit_sums, unit_sizes, n_bootstrap, seed)
    return PairedDifference(line_a, line_b, measure, len(difference), len(labels), float(difference.mean()), low, high,
                            p, n_patterns, exact, 0.95, alpha)


def compare_lines(primary: LineData, other: LineData, n_permutations: int, n_bootstrap: int, seed: int,
                  alpha: float) -> tuple[pd.DataFrame, tuple]:
    """Per-KD cosines between two lines and the paired comparisons of routing against output consistency.

    The cross-line Gram of the Jacobians is streamed from both lines' shards (`gram.stream_gram`); the primary
    line's output clusters are the units of inference. Returns the per-KD table (line_a, line_b, kd, cluster,
    cos_output, cos_jacobian, their baselines and KD-specific values, difference (specific), raw_difference) and the
    `PairedDifference`s (KD-specific first, then raw).
    """
    kds = common_kds(primary.kd_names, other.kd_names)
    if len(kds) < 3:
        raise ValueError(f"cell lines {primary.name} and {other.name} share {len(kds)} KD(s); at least 3 are needed")
    rows_a = np.array([primary.kd_names.index(k) for k in kds])
    rows_b = np.array([other.kd_names.index(k) for k in kds])
    output = cosine_similarity(primary.delta_y[rows_a].astype(np.float64), other.delta_y[rows_b].astype(np.float64))
    gram = stream_gram(primary.shards, other=other.shards)[np.ix_(rows_a, rows_b)]
    routing = cosines_from_products(gram, primary.jacobian_norms[rows_a], other.jacobian_norms[rows_b])
    (cos_output, base_output), (cos_jacobian, base_jacobian) = matched_and_baseline(output), matched_and_baseline(routing)
    clusters = np.asarray(primary.labels)[rows_a]
    table = pd.DataFrame({"line_a": primary.name, "line_b": other.name, "kd": kds, "cluster": clusters,
                          "cos_output": cos_output, "cos_jacobian": cos_jacobian,
                          "baseline_output": base_output, "baseline_jacobian": base_jacobian,
                          "specific_output": cos_output - base_output, "specific_jacobian": cos_jacobian - base_jacobian})
    table["difference"] = table["specific_jacobian"] - table["specific_output"]
    table["raw_difference"] = table["cos_jacobian"] - table["cos_output"]
    tests = tuple(paired_difference(table[column].to_numpy(), clusters, primary.name, other.name, measure,
                                    n_permutations, n_bootstrap, seed, alpha)
                  for measure, column in (("specific", "difference"), ("raw", "raw_difference")))
    return table, tests




@dataclass(frozen=True)
class LineData:
    """What one cell line contributes to the comparison: its KDs in its own order, ΔY [K, G] in that order, its
    Jacobian shards, the Frobenius norm of each J_k [K] (the routing stage's, from the Gram's diagonal) and its output
    clusters [K] (the primary line's are the units of inference)."""

    name: str
    kd_names: tuple
    delta_y: np.ndarray
    shards: object  # store.shards.JacobianShards
    jacobian_norms: np.ndarray
    labels: np.ndarray


"""Stage 3b — routing across cell lines: is a KD's routing more consistent between lines than its output?

The seed's NB04 found that in-silico knock-outs barely agree between cell lines (mean cross-line r = 0.057):
input routing is not backbone-level. For every KD analysed in two lines (same model, each line's own control
cells) this stage measures the cosine of its ΔY_k between the lines and the cosine of its Jacobian J_k
(flattened G × H) between the lines, and per KD the difference d_k = cos J − cos ΔY: positive when the model
routes the KD the same way in both lines more than its predicted outputs agree.

Inference on the mean of d: KDs of one output cluster share their responses, so their d's are dependent and a
KD-level test would count each cluster many times. The units are the primary line's output clusters (the
weak-effect group is one unit too). Under H0 each cluster's sum of d is symmetric about 0 and clusters are
independent, and the sign-flip distribution of the cluster sums is exact (every sign pattern enumerated up to
2^16 of them, a seeded sample beyond). The 95% interval resamples clusters (percentile bootstrap).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from .formatting import p_phrase

MAX_ENUMERATED_UNITS = 16  # 2^16 sign patterns; beyond, a Monte Carlo sample


@dataclass(frozen=True)
class PairedDifference:
    """Mean over KDs of d_k = cos J_k − cos ΔY_k between two lines, with cluster-level inference.

    estimate: mean d over the KDs; ci_low/ci_high: cluster-bootstrap percentile interval (level `confidence`);
    p_value: two-sided sign-flip p over the `n_units` clusters; exact: every sign pattern enumerated.
    """

    line_a: str
    line_b: str
    n_kds: int
    n_units: int
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n_sign_patterns: int
    exact: bool
    confidence: float
    alpha: float

    @property
    def direction(self) -> str:
        """'more', 'less' (routing vs output consistency, significant at alpha with the interval agreeing) or 'no difference'."""
        if self.p_value < self.alpha and self.ci_low > 0:
            return "more"
        if self.p_value < self.alpha and self.ci_high < 0:
            return "less"
        return "no difference"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PairedDifference":
        return cls(**values)


def common_kds(primary: tuple, other: tuple) -> tuple:
    """The KDs analysed in both lines, in the primary line's order."""
    present = set(other)
    return tuple(k for k in primary if k in present)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[K] cosine between row k of a and row k of b ([K, D] each); 0 where a row is zero."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-300), 0.0)


def _shard_rows(shards, kd_names: tuple) -> dict:
    """KD name -> (shard path, row) of a line's Jacobian shards (reads only their `kd_index` arrays)."""
    where = {}
    for path in shards.paths:
        with np.load(path) as shard:
            for row, k in enumerate(shard["kd_index"]):
                where[kd_names[int(k)]] = (path, row)
    return where


def jacobian_cosines(shards_a, names_a: tuple, shards_b, names_b: tuple, kds: tuple) -> np.ndarray:
    """[len(kds)] cos(J_k^a, J_k^b) of the flattened [G, H] Jacobians, streamed: one shard per line in memory,
    each shard read once when both lines list their KDs in the same order (the usual case)."""
    where_a, where_b = _shard_rows(shards_a, names_a), _shard_rows(shards_b, names_b)
    readers = [lru_cache(maxsize=1)(_read_jacobians), lru_cache(maxsize=1)(_read_jacobians)]
    out = np.empty(len(kds))
    for i, kd in enumerate(kds):
        rows = [readers[side](where[kd][0])[where[kd][1]].reshape(1, -1) for side, where in enumerate((where_a, where_b))]
        out[i] = row_cosines(*rows)[0]
    return out


def _read_jacobians(path) -> np.ndarray:
    with np.load(path) as shard:
        return shard["jacobian"]


def sign_flip_p(unit_sums: np.ndarray, n_permutations: int, seed: int) -> tuple[float, int, bool]:
    """Two-sided p of Σ unit_sums against its sign-flip distribution: (p, patterns used, exact).

    Exact (all 2^C patterns, the observed one included) for C ≤ MAX_ENUMERATED_UNITS units, else
    `n_permutations` seeded patterns with the +1 correction.
    """
    observed = abs(unit_sums.sum())
    tolerance = 1e-12 * max(np.abs(unit_sums).sum(), 1e-300)  # ties within rounding count as extreme
    if len(unit_sums) <= MAX_ENUMERATED_UNITS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(unit_sums))))
        extreme = np.abs(signs @ unit_sums) >= observed - tolerance
        return float(extreme.mean()), len(signs), True
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_permutations, len(unit_sums)))
    extreme = np.abs(signs @ unit_sums) >= observed - tolerance
    return float((1 + extreme.sum()) / (n_permutations + 1)), n_permutations, False


def cluster_bootstrap_interval(unit_sums: np.ndarray, unit_sizes: np.ndarray, n_bootstrap: int, seed: int,
                               confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the KD-level mean Σ sums / Σ sizes when the units (clusters) are resampled."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(unit_sums), size=(n_bootstrap, len(unit_sums)))
    means = unit_sums[draws].sum(axis=1) / unit_sizes[draws].sum(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_difference(difference: np.ndarray, units: np.ndarray, line_a: str, line_b: str, n_permutations: int,
                      n_bootstrap: int, seed: int, alpha: float) -> PairedDifference:
    """Cluster-level inference for the mean of `difference` [K] (d_k), `units` [K] the cluster of each KD."""
    labels, index = np.unique(units, return_inverse=True)
    unit_sums = np.bincount(index, weights=difference, minlength=len(labels))
    unit_sizes = np.bincount(index, minlength=len(labels)).astype(np.float64)
    p, n_patterns, exact = sign_flip_p(unit_sums, n_permutations, seed)
    low, high = cluster_bootstrap_interval(unit_sums, unit_sizes, n_bootstrap, seed)
    return PairedDifference(line_a, line_b, len(difference), len(labels), float(difference.mean()), low, high, p,
                            n_patterns, exact, 0.95, alpha)


def compare_lines(line_a: str, line_b: str, names_a: tuple, names_b: tuple, delta_y_a: np.ndarray,
                  delta_y_b: np.ndarray, shards_a, shards_b, labels_a: np.ndarray, n_permutations: int,
                  n_bootstrap: int, seed: int, alpha: float) -> tuple[pd.DataFrame, PairedDifference]:
    """Per-KD cosines between two lines and the paired comparison of routing against output consistency.

    names_*: each line's KD order; delta_y_* [K_*, G] ΔY in that order; shards_*: its Jacobian shards; labels_a
    [K_a]: the primary line's output clusters (the units of inference). Returns the per-KD table (line_a, line_b,
    kd, cluster, cos_output, cos_jacobian, difference) and the `PairedDifference`.
    """
    kds = common_kds(names_a, names_b)
    if len(kds) < 2:
        raise ValueError(f"cell lines {line_a} and {line_b} share {len(kds)} KD(s); at least 2 are needed")
    rows_a = np.array([names_a.index(k) for k in kds])
    rows_b = np.array([names_b.index(k) for k in kds])
    cos_output = row_cosines(delta_y_a[rows_a], delta_y_b[rows_b])
    cos_jacobian = jacobian_cosines(shards_a, names_a, shards_b, names_b, kds)
    clusters = np.asarray(labels_a)[rows_a]
    table = pd.DataFrame({"line_a": line_a, "line_b": line_b, "kd": kds, "cluster": clusters,
                          "cos_output": cos_output, "cos_jacobian": cos_jacobian,
                          "difference": cos_jacobian - cos_output})
    test = paired_difference(table["difference"].to_numpy(), clusters, line_a, line_b, n_permutations,
                             n_bootstrap, seed, alpha)
    return table, test


def describe(table: pd.DataFrame, test: PairedDifference) -> str:
    """One sentence on one pair of lines: median cosines, the mean difference, its interval and p."""
    verdict = {"more": "routing is more consistent between the lines than output",
               "less": "routing is less consistent between the lines than output",
               "no difference": "no detectable difference between routing and output consistency"}[test.direction]
    kind = "exact" if test.exact else f"{test.n_sign_patterns:,} sampled patterns"
    return (f"{test.line_a} vs {test.line_b} ({test.n_kds} KDs): median cos ΔY {table['cos_output'].median():.2f}, "
            f"median cos J {table['cos_jacobian'].median():.2f}; mean cos J − cos ΔY = {test.estimate:+.2f} "
            f"({test.confidence:.0%} cluster-bootstrap CI {test.ci_low:+.2f} to {test.ci_high:+.2f}; sign-flip over "
            f"{test.n_units} clusters, {kind}, {p_phrase(test.p_value, None if test.exact else test.n_sign_patterns)}): {verdict}")

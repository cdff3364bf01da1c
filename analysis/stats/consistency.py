"""Routing across cell lines: is a KD's routing more consistent between lines than its output?

The seed's NB04 found that in-silico knock-outs barely agree between cell lines (mean cross-line r = 0.057):
input routing is not backbone-level. For every KD analysed in two lines (same model, each line's own control
cells) this stage measures the cosine of its ΔY_k between the lines and the cosine of its Jacobian J_k
(flattened G × H) between the lines.

Raw cosines mislead when one quantity has a large component common to all KDs: Jacobians typically do (the mean
C_jac within a line is often above 0.5), so J_k in one line resembles *every* KD's J in the other, and a high cos J
says little about KD k. Each side is therefore read on its KD-specific part, the same split the routing call reads
(`decomposition.decompose`): within each line, the unit-norm rows u_k = X_k / ‖X_k‖ (X = J or ΔY) less their
projection on that line's common direction ĝ = ū / ‖ū‖, u_k^⊥ = u_k − (u_k·ĝ) ĝ; the KD-specific cosine is
cos(u_k^⊥ in one line, u_k^⊥ in the other). d_k = specific cos J_k − specific cos ΔY_k is the comparison that
answers (positive: the model keeps a KD's own routing across lines more than its own response); the raw difference
cos J − cos ΔY is reported beside it.

Why this scale and not a baseline subtracted: cosine minus the KD's mean cosine b_k with the other KDs tops out at
1 − b_k, and b_k differs between the sides (demo medians 0.51 for J, 0.09 for ΔY), so a KD identical in both lines
would score about −0.42 — "less consistent" built in (the demo's planted 100 %-shared modules read −0.55 on it).
Dividing by 1 − b_k (a chance correction) fixes the top but not the bottom, which falls to (−1 − b)/(1 − b) (−3 at
b = 0.5), and it under-reads a KD whose own part is identical while the lines' common parts differ. The projected
cosine lies in [−1, 1] on both sides, is exactly 1 on both for a model whose routing and outputs are identical in
the two lines (d = 0: the diagonal of the figure), about 0 where the KD-specific parts are unrelated, and reads the
same KD-specific routing the call is about. Each line keeps its own ĝ, from all its KDs as the routing stage takes
it, so a common direction that differs between lines does not count against a KD's own routing. Within a line the
KD-specific parts reproduce across control-draw halves (demo: split-half cosine ≥ 0.999 on both sides), so a
cross-line cosine below 1 is the model's, not estimation noise.

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


def specific_cosines(cross: np.ndarray, gram_a: np.ndarray, gram_b: np.ndarray) -> np.ndarray:
    """Cosines [K_a, K_b] between two lines of the KD-specific parts u_k^⊥ = u_k − (u_k·ĝ) ĝ (module docstring), from
    Grams alone: `cross` [K_a, K_b] ⟨X^a_k, X^b_l⟩ and each line's own Gram [K, K] ⟨X_k, X_l⟩, every KD of each line
    (its ĝ is taken over all of them, as `decomposition.decompose` takes it). X is J flattened or ΔY, any unit.

    With c the cosines, u_k·ĝ_a = (C_aa 1)_k / √(1ᵀC_aa 1), and ⟨u^a⊥_k, u^b⊥_l⟩ = c_kl − (u^a_k·ĝ_b)(u^b_l·ĝ_b)
    − (u^a_k·ĝ_a)(ĝ_a·u^b_l) + (u^a_k·ĝ_a)(u^b_l·ĝ_b)(ĝ_a·ĝ_b); ‖u^a⊥_k‖² = 1 − (u^a_k·ĝ_a)². A KD with X = 0, or one
    lying along ĝ, has no KD-specific part and cosine 0.
    """
    norms_a, norms_b = (np.sqrt(np.clip(np.diag(g), 0, None)) for g in (gram_a, gram_b))
    c = cosines_from_products(cross, norms_a, norms_b)
    within_a, within_b = cosines_from_products(gram_a, norms_a, norms_a), cosines_from_products(gram_b, norms_b, norms_b)
    mass_a, mass_b = within_a.sum(), within_b.sum()  # 1ᵀC1 = K² ‖ū‖²
    if mass_a <= 0 or mass_b <= 0:  # no common direction (every X zero, or the mean of the u_k is 0): nothing to project off
        return c
    along_a, along_b = within_a.sum(axis=1) / np.sqrt(mass_a), within_b.sum(axis=1) / np.sqrt(mass_b)  # u_k·ĝ, own line
    a_on_b, b_on_a = c.sum(axis=1) / np.sqrt(mass_b), c.sum(axis=0) / np.sqrt(mass_a)  # u^a_k·ĝ_b [K_a], ĝ_a·u^b_l [K_b]
    common = c.sum() / np.sqrt(mass_a * mass_b)  # ĝ_a·ĝ_b
    products = c - np.outer(a_on_b, along_b) - np.outer(along_a, b_on_a) + common * np.outer(along_a, along_b)
    # ‖u⊥‖ of a KD along ĝ is rounding (cancellation of two numbers near 1): below 1e-6, taken as no specific part
    rest_a, rest_b = (np.sqrt(np.where((n > 0) - along**2 > 1e-12, (n > 0) - along**2, 0.0))
                      for n, along in ((norms_a, along_a), (norms_b, along_b)))
    return np.clip(cosines_from_products(products, rest_a, rest_b), -1.0, 1.0)


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

    The cross-line Gram of the Jacobians is streamed from both lines' shards (`gram.stream_gram`); each line's own
    Gram is its routing stage's; the primary line's output clusters are the units of inference. Returns the per-KD
    table, one row per KD analysed in both lines (line_a, line_b, kd, cluster; cos_output, cos_jacobian: raw cosines;
    baseline_output, baseline_jacobian: the KD's mean raw cosine with the other KDs, what a shared component lifts;
    specific_output, specific_jacobian: KD-specific cosines, `specific_cosines`; difference: specific J − specific ΔY;
    raw_difference: cos J − cos ΔY; all unitless, in [−1, 1] or [−2, 2] for the differences) and the
    `PairedDifference`s (KD-specific first, then raw).
    """
    kds = common_kds(primary.kd_names, other.kd_names)
    if len(kds) < 3:
        raise ValueError(f"cell lines {primary.name} and {other.name} share {len(kds)} KD(s); at least 3 are needed")
    matched = np.ix_([primary.kd_names.index(k) for k in kds], [other.kd_names.index(k) for k in kds])
    delta_a, delta_b = primary.delta_y.astype(np.float64), other.delta_y.astype(np.float64)
    sides = {"output": (delta_a @ delta_b.T, delta_a @ delta_a.T, delta_b @ delta_b.T),
             "jacobian": (stream_gram(primary.shards, other=other.shards), primary.jacobian_gram, other.jacobian_gram)}
    clusters = np.asarray(primary.labels)[matched[0].ravel()]
    table = pd.DataFrame({"line_a": primary.name, "line_b": other.name, "kd": kds, "cluster": clusters})
    for side, (cross, gram_a, gram_b) in sides.items():
        norms_a, norms_b = (np.sqrt(np.clip(np.diag(g), 0, None)) for g in (gram_a, gram_b))
        table[f"cos_{side}"], table[f"baseline_{side}"] = matched_and_baseline(
            cosines_from_products(cross, norms_a, norms_b)[matched])
        table[f"specific_{side}"] = np.diag(specific_cosines(cross, gram_a, gram_b)[matched])
    table["difference"] = table["specific_jacobian"] - table["specific_output"]
    table["raw_difference"] = table["cos_jacobian"] - table["cos_output"]
    tests = tuple(paired_difference(table[column].to_numpy(), clusters, primary.name, other.name, measure,
                                    n_permutations, n_bootstrap, seed, alpha)
                  for measure, column in (("specific", "difference"), ("raw", "raw_difference")))
    return table, tests


@dataclass(frozen=True)
class LineData:
    """What one cell line contributes to the comparison: its KDs in its own order, ΔY [K, G] in that order, its
    Jacobian shards, the Gram of its flattened Jacobians [K, K] (the routing stage's, ⟨J_k, J_l⟩) and its output
    clusters [K] (the primary line's are the units of inference)."""

    name: str
    kd_names: tuple
    delta_y: np.ndarray
    shards: object  # store.shards.JacobianShards
    jacobian_gram: np.ndarray
    labels: np.ndarray

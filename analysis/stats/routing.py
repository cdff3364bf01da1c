"""Routing statistics: does Jacobian (routing) similarity track output similarity?

Matrices are K × K similarities between KDs; statistics use their upper triangles. Pairs
share KDs, so pair-level p-values are not valid: inference permutes KD labels (Mantel),
resamples KDs (bootstrap CI) or permutes cluster labels. The seed's pair-level rank-sum
test is computed too, and labelled anti-conservative.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import pandas as pd
from scipy.spatial.distance import squareform
from scipy.stats import mannwhitneyu, rankdata

from ..results import (
    ClusterContrast,
    ClusterLevel,
    Decomposition,
    DepthRouting,
    RoutingEvidence,
    Spread,
    StudentizedTest,
)


class JacobianShards(Protocol):
    """What the statistics read of stored Jacobians (`store.shards.JacobianShards` is the store's reader): K KDs of
    shape (G, H), in shards of `sizes` KDs."""

    n_kds: int
    shape: tuple

    @property
    def sizes(self) -> list[int]: ...

    def rows(self, shard_numbers: range) -> tuple[np.ndarray, np.ndarray]: ...

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


# ---------------------------------------------------------------- streamed Gram and SVD
def stream_gram(shards: JacobianShards, memory_bytes: int = 2 << 30, other: JacobianShards | None = None) -> np.ndarray:
    """Gram matrix [K, K] of the flattened Jacobians, Σ_gh J_k[g,h] J_l[g,h], in float64; with `other` (another
    run's shards, e.g. another cell line's) the cross Gram [K, K_other] of Σ_gh J_k[g,h] J'_l[g,h].

    Shards are read in row blocks that fit `memory_bytes / 2`; each block is multiplied with every shard from
    itself on (every shard of `other`). Memory: one row block + one shard + K² doubles, whatever K is.
    """
    gram = np.zeros((shards.n_kds, (other or shards).n_kds))
    sizes = shards.sizes
    n_shards = len(sizes)
    row_bytes = int(np.prod(shards.shape)) * 4
    per_block = max(1, (memory_bytes // 2) // max(row_bytes, 1))
    start = 0
    while start < n_shards:
        stop, rows = start, 0
        while stop < n_shards and (rows + sizes[stop] <= per_block or stop == start):
            rows += sizes[stop]
            stop += 1
        block_index, block = shards.rows(range(start, stop))
        columns_from = other or shards
        for shard in (range(start, n_shards) if other is None else range(len(other.sizes))):
            other_index, columns = columns_from.rows(range(shard, shard + 1))
            product = block @ columns.T
            gram[np.ix_(block_index, other_index)] = product
            if other is None:
                gram[np.ix_(other_index, block_index)] = product.T
        start = stop
    return gram


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    safe = np.where(norms > 0, norms, 1.0)
    sim = np.clip(gram / np.outer(safe, safe), -1, 1)
    np.fill_diagonal(sim, 1.0)
    return sim


@dataclass(frozen=True)
class JacobianSVD:
    """SVD of the stacked unit-norm Jacobians [K, G·H], J_k / ‖J_k‖_F, through their cosine matrix C_jac.

    Unit norm because an uncentred SVD of raw Jacobians lets the KDs with the largest Jacobian norms define the
    first axis by size alone; on unit-norm rows an axis is a shared routing *direction*.
    singular_values [A]; variance_explained [A] (share of K = trace of C_jac); kd_scores [K, A] = U·s; axes [A, G, H]
    right singular vectors; gene_loadings [A, G] (leading gene factor of each axis, signed so that genes going up in
    high-scoring KDs load positively); input_directions [A, H] (the matching pert_repr factor, unit norm: moving p
    along it moves the output along the gene loading, to first order).
    """

    singular_values: np.ndarray
    variance_explained: np.ndarray
    kd_scores: np.ndarray
    axes: np.ndarray
    gene_loadings: np.ndarray
    input_directions: np.ndarray


def jacobian_svd(gram: np.ndarray, shards: JacobianShards, delta_y: np.ndarray, n_axes: int) -> JacobianSVD:
    """Left vectors from the eigendecomposition of C_jac (the Gram of unit-norm J_k); right vectors
    V_a = Σ_k (J_k / ‖J_k‖) U[k,a] / s_a in one streamed pass.

    Only the leading `n_axes` eigenpairs are computed (Lanczos when they are few, so K = 10⁴ KDs avoids a K³
    decomposition), and shares of variance are taken against the trace.
    """
    from scipy.linalg import eigh
    from scipy.sparse.linalg import eigsh

    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    norms = np.where(norms > 0, norms, 1.0)
    unit_gram = gram / np.outer(norms, norms)
    n_kds = gram.shape[0]
    n_axes = int(min(n_axes, n_kds))
    if 10 * n_axes < n_kds:
        eigenvalues, u = eigsh(unit_gram, k=n_axes, which="LA", v0=np.ones(n_kds))
        order = np.argsort(eigenvalues)
        eigenvalues, u = eigenvalues[order], u[:, order]
    else:
        eigenvalues, u = eigh(unit_gram, subset_by_index=[n_kds - n_axes, n_kds - 1])
    eigenvalues, u = np.clip(eigenvalues[::-1], 0, None), u[:, ::-1]
    s = np.sqrt(eigenvalues)
    n_axes = int(np.sum(s > s[0] * 1e-8))
    eigenvalues, s = eigenvalues[:n_axes], s[:n_axes]
    u = u[:, :n_axes] * np.sign(u[np.argmax(np.abs(u[:, :n_axes]), axis=0), np.arange(n_axes)])
    axes = np.zeros((n_axes,) + tuple(shards.shape))
    for kd_index, jac in shards:
        axes += np.einsum("ka,kgh->agh", u[kd_index] / norms[kd_index, None], jac.astype(np.float64))
    axes /= s[:, None, None]
    loadings = np.zeros((n_axes, shards.shape[0]))
    directions = np.zeros((n_axes, shards.shape[1]))
    for a in range(n_axes):
        left, _, right = np.linalg.svd(axes[a], full_matrices=False)
        sign = -1.0 if left[:, 0] @ (u[:, a] @ delta_y) < 0 else 1.0
        loadings[a], directions[a] = sign * left[:, 0], sign * right[0]
    return JacobianSVD(s, eigenvalues / max(np.trace(unit_gram), 1e-300), u * s, axes, loadings, directions)


# ---------------------------------------------------------------- pair statistics
def upper(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle of a symmetric [K, K] matrix, row by row [K(K−1)/2]."""
    return squareform(matrix, checks=False)


def _zscore(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean()
    sd = np.sqrt((centred**2).mean())
    return centred / sd if sd > 0 else centred


def _standardised(matrix: np.ndarray) -> np.ndarray:
    """A symmetric matrix whose upper triangle is z-scored (diagonal 0), so a Pearson r is a mean of products."""
    i, j = np.triu_indices(matrix.shape[0], k=1)
    out = np.zeros_like(matrix, dtype=np.float64)
    z = _zscore(matrix[i, j].astype(np.float64))
    out[i, j] = z
    out[j, i] = z
    return out


def rank_matrix(matrix: np.ndarray) -> np.ndarray:
    """Off-diagonal entries replaced by their ranks (for Spearman Mantel)."""
    i, j = np.triu_indices(matrix.shape[0], k=1)
    out = np.zeros_like(matrix, dtype=np.float64)
    ranks = rankdata(matrix[i, j])
    out[i, j] = ranks
    out[j, i] = ranks
    return out


def jackknife_se(leave_one_out: np.ndarray) -> np.ndarray:
    """Delete-one jackknife SE from leave-one-out values [..., K] (NaN entries ignored)."""
    finite = np.isfinite(leave_one_out)
    n = finite.sum(axis=-1)
    mean = np.where(finite, leave_one_out, 0.0).sum(axis=-1, keepdims=True) / np.maximum(n, 1)[..., None]
    centred = np.where(finite, leave_one_out - mean, 0.0)
    se = np.sqrt((n - 1) / np.maximum(n, 1) * (centred**2).sum(axis=-1))
    return np.where(n >= 2, se, np.nan)


def _pearson_from_sums(n, sx, sy, sxx, syy, sxy):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (n * sxy - sx * sy) / np.sqrt((n * sxx - sx**2) * (n * syy - sy**2))


def _row_sums(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Off-diagonal row sums of a symmetric matrix and of its square, float64 [K] each."""
    m = matrix.astype(np.float64).copy()
    np.fill_diagonal(m, 0.0)
    return m.sum(axis=1), (m**2).sum(axis=1)


def _pearson_and_leave_one_out(rx, rxx, ry, ryy, rxy):
    """r of two upper triangles and its K leave-one-KD-out values, from off-diagonal row sums [..., K].

    Dropping KD k removes the K − 1 pairs it belongs to, i.e. its row sums: every leave-one-out r is O(1).
    """
    n_kds = rx.shape[-1]
    n = n_kds * (n_kds - 1) / 2
    totals = [r.sum(axis=-1, keepdims=True) / 2 for r in (rx, ry, rxx, ryy, rxy)]
    r = _pearson_from_sums(n, *(t[..., 0] for t in totals))
    loo = _pearson_from_sums(n - (n_kds - 1), *(t - row for t, row in zip(totals, (rx, ry, rxx, ryy, rxy))))
    return r, loo


def _products_under_permutations(fixed: np.ndarray, moving: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """Row sums Σ_l fixed[k, l]·moving[π_k, π_l] for each permutation π [B, K] → [B, K] (diagonals zeroed)."""
    f = fixed.astype(np.float64).copy()
    m = moving.astype(np.float64).copy()
    np.fill_diagonal(f, 0.0)
    np.fill_diagonal(m, 0.0)
    return np.einsum("kl,bkl->bk", f, m[perms[:, :, None], perms[:, None, :]])


def permutations(n_kds: int, n_permutations: int, seed: int, batch: int) -> Iterator[np.ndarray]:
    """Seeded KD-label permutations [b, K] in batches of at most `batch`."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_permutations, batch):
        yield np.argsort(rng.random((min(batch, n_permutations - start), n_kds)), axis=1)


def _batch_size(n_kds: int, budget_bytes: int = 256 << 20) -> int:
    return int(max(1, min(256, budget_bytes // (8 * n_kds * n_kds))))


def _p_greater(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p with the +1 correction; NaN if the statistic is undefined.

    Ties count as extreme within a relative tolerance of 1e-9 (float64 sums of the same values in another order).
    Undefined permuted statistics (NaN) count as not extreme but stay in the denominator.
    """
    if not np.isfinite(observed):
        return float("nan")
    tolerance = 1e-9 * max(1.0, abs(observed))
    return float((1 + np.sum(np.nan_to_num(null, nan=-np.inf) >= observed - tolerance)) / (1 + len(null)))


def mantel(a: np.ndarray, b: np.ndarray, n_permutations: int, seed: int, method: str = "pearson") -> StudentizedTest:
    """Studentized one-sided Mantel test (r > 0) between two K × K similarity matrices; KD labels of `b` permuted.

    statistic: Pearson (or Spearman: Pearson of the ranked off-diagonal entries) r of the upper triangles;
    standard_error: its delete-one-KD jackknife SE (for Spearman, of the Pearson r of the fixed ranks); the test
    statistic is r / SE, recomputed for every permutation. Cost: O(n_permutations · K²) (K = 1,035: seconds;
    K = 10,000: about 10⁸ multiply-adds per permutation).
    """
    if method == "spearman":
        a, b = rank_matrix(a), rank_matrix(b)
    rx, rxx = _row_sums(a)
    ry, ryy = _row_sums(b)
    r, loo = _pearson_and_leave_one_out(rx, rxx, ry, ryy, _products_under_permutations(a, b, np.arange(len(a))[None])[0])
    se = float(jackknife_se(loo))
    null = []
    for perms in permutations(len(a), n_permutations, seed, _batch_size(len(a))):
        rxy = _products_under_permutations(a, b, perms)
        r_perm, loo_perm = _pearson_and_leave_one_out(rx, rxx, ry[perms], ryy[perms], rxy)
        null.append(r_perm / jackknife_se(loo_perm))
    observed = float(r) / se if se > 0 else float("nan")
    return StudentizedTest(float(r), se, _p_greater(observed, np.concatenate(null)), n_permutations)


def partial_mantel(a: np.ndarray, b: np.ndarray, given: np.ndarray, n_permutations: int, seed: int) -> StudentizedTest:
    """Studentized partial Mantel r(a, b | given), one-sided; KD labels of `a` permuted (Smouse et al. 1986).

    Descriptive only: under a shared cause (a and b both driven by `given`) no permutation scheme keeps its level
    (Guillot & Rousset 2013), so the verdict never reads it.
    """
    ra, raa = _row_sums(a)
    rb, rbb = _row_sums(b)
    rc, rcc = _row_sums(given)
    identity = np.arange(len(a))[None]
    r_bc, loo_bc = _pearson_and_leave_one_out(rb, rbb, rc, rcc, _products_under_permutations(b, given, identity)[0])

    def partial(perms):
        r_ab, loo_ab = _pearson_and_leave_one_out(rb, rbb, ra[perms], raa[perms], _products_under_permutations(b, a, perms))
        r_ac, loo_ac = _pearson_and_leave_one_out(rc, rcc, ra[perms], raa[perms], _products_under_permutations(given, a, perms))
        value = _partial_from(r_ab, r_ac, r_bc)
        return value, value / jackknife_se(_partial_from(loo_ab, loo_ac, loo_bc))

    value, observed = partial(identity)
    null = np.concatenate([partial(p)[1] for p in permutations(len(a), n_permutations, seed, _batch_size(len(a)))])
    se = float(value[0] / observed[0]) if observed[0] != 0 else 0.0
    return StudentizedTest(float(value[0]), se, _p_greater(float(observed[0]), null), n_permutations)


def _partial_from(r_ab, r_ac, r_bc):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r_ab - r_ac * r_bc) / np.sqrt(np.clip((1 - r_ac**2) * (1 - r_bc**2), 1e-12, None))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    x, y = _zscore(upper(a)), _zscore(upper(b))
    return float(x @ y / len(x))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rank_matrix(a), rank_matrix(b))


def kd_bootstrap_ci(a: np.ndarray, b: np.ndarray, n_bootstrap: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the Pearson r of the upper triangles, resampling KDs (not pairs) with replacement.

    Pairs of a KD with a copy of itself are dropped.
    """
    rng = np.random.default_rng(seed)
    n = a.shape[0]
    i, j = np.triu_indices(n, k=1)
    values = np.empty(n_bootstrap)
    for t in range(n_bootstrap):
        idx = rng.integers(n, size=n)
        keep = idx[i] != idx[j]
        x, y = a[idx[i[keep]], idx[j[keep]]], b[idx[i[keep]], idx[j[keep]]]
        values[t] = np.corrcoef(x, y)[0, 1]
    tail = (1 - level) / 2
    return float(np.nanquantile(values, tail)), float(np.nanquantile(values, 1 - tail))


# ---------------------------------------------------------------- same- vs cross-cluster routing


def _contrast_and_jackknife_se(sim: np.ndarray, onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sim [n, n] (zero diagonal); onehot [B, n, C] cluster indicators of B labelings.

    Returns mean(same) − mean(cross) [B] (NaN without same-cluster pairs) and its delete-one-KD jackknife SE [B].
    Dropping KD k removes its row sum s_k over same-cluster partners and t_k − s_k over cross-cluster partners, so
    every leave-one-out value comes from row sums: O(B·n²·C), no loop over KDs.
    """
    n = sim.shape[0]
    same_rows = np.einsum("kl,blc,bkc->bk", sim, onehot, onehot)
    rows = sim.sum(axis=1)[None]
    sizes = onehot.sum(axis=1)
    own_size = np.einsum("bkc,bc->bk", onehot, sizes)
    same_sum, total = same_rows.sum(axis=1) / 2, sim.sum() / 2
    n_same, n_pairs = (sizes * (sizes - 1) / 2).sum(axis=1), n * (n - 1) / 2
    loo_same, loo_n_same = same_sum[:, None] - same_rows, n_same[:, None] - (own_size - 1)
    loo_cross, loo_n_cross = (total - rows) - loo_same, (n_pairs - (n - 1)) - loo_n_same
    with np.errstate(invalid="ignore", divide="ignore"):
        difference = same_sum / n_same - (total - same_sum) / (n_pairs - n_same)
        loo = loo_same / loo_n_same - loo_cross / loo_n_cross
    loo = np.where(np.isfinite(loo), loo, np.nan)
    return difference, jackknife_se(loo)


def cluster_contrast(similarity: np.ndarray, labels: np.ndarray, n_permutations: int, seed: int) -> ClusterContrast:
    """Do same-cluster KD pairs have higher `similarity` than cross-cluster pairs?

    The permutation test studentizes the difference: under a per-KD lookup (Model A) same-cluster C_jac has the
    same mean as cross-cluster C_jac but a larger spread, which breaks the exchangeability a raw-difference label
    permutation needs (it rejected ~20 % at α = 0.05 on the negative known answer); the studentized statistic
    is robust to that (Janssen 1997; Chung & Romano 2013).
    """
    keep = labels > 0
    sim, lab = similarity[np.ix_(keep, keep)].astype(np.float64), labels[keep]
    i, j = np.triu_indices(len(lab), k=1)
    values = sim[i, j]
    same = lab[i] == lab[j]
    n_same, n_cross = int(same.sum()), int((~same).sum())
    if n_same and n_cross:
        u = mannwhitneyu(values[same], values[~same], alternative="greater")
        auc, rank_sum_p = float(u.statistic / (n_same * n_cross)), float(u.pvalue)
    else:
        auc = rank_sum_p = float("nan")
    spread = float(values.std()) if len(values) else float("nan")
    np.fill_diagonal(sim, 0.0)
    clusters = np.unique(lab)

    def difference_and_se(label_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _contrast_and_jackknife_se(sim, (label_rows[:, :, None] == clusters).astype(np.float64))

    difference, se = (float(v[0]) for v in difference_and_se(lab[None]))
    null = []
    for perms in permutations(len(lab), n_permutations, seed, 128):
        d, s = difference_and_se(lab[perms])
        with np.errstate(invalid="ignore", divide="ignore"):
            null.append(d / s)
    observed = difference / se if se > 0 else float("nan")
    unit = spread if spread > 0 else float("nan")
    mean_same = float(values[same].mean()) if n_same else float("nan")
    mean_cross = float(values[~same].mean()) if n_cross else float("nan")
    return ClusterContrast(n_same, n_cross, mean_same, mean_cross, difference, spread, auc, rank_sum_p,
                           StudentizedTest(difference / unit, se / unit, _p_greater(observed, np.concatenate(null)),
                                           n_permutations), n_same / max(n_same + n_cross, 1))



# ---------------------------------------------------------------- common and KD-specific routing
def decompose(gram: np.ndarray) -> tuple[Decomposition, np.ndarray]:
    """Routing split into the direction every KD shares and the KD-specific rest, exactly from the K × K Gram.

    On unit-norm Jacobians u_k = J_k / ‖J_k‖ (a KD's gain is not its routing) with mean ū and common direction
    ĝ = ū / ‖ū‖: each u_k = (u_k·ĝ) ĝ + u_k^⊥. common_share = Σ_k (u_k·ĝ)² / K, the share of Σ_k ‖u_k‖² = K along ĝ
    (≥ ‖ū‖² = mean of C_jac); specific_share = 1 − common_share = Σ_k ‖u_k^⊥‖² / K. C_jac^spec = cos(u_k^⊥, u_l^⊥),
    from the projected Gram C − (C1)(C1)ᵀ / 1ᵀC1. No pass over the shards.

    Projection rather than centring (H·C·H, cos(u_k − ū, u_l − ū)): centring keeps each KD's loading on ĝ minus the
    mean loading, and that loading follows the noise's size — when routing is identical up to noise whose level is
    shared within output modules, the centred matrix clusters by module (cluster circuits in 5 of 20 replicates of
    `calibration`'s "identical-noise-modules" world); the projected one does not. Returns (Decomposition, C_jac^spec).
    """
    c = cosine_from_gram(gram).astype(np.float64)
    n_kds = len(c)
    loading = c.sum(axis=1)  # K ⟨u_k, ū⟩
    total = float(loading.sum())  # K² ‖ū‖²
    if total > 0:
        common = float(np.clip((loading**2).sum() / total / n_kds, 0.0, 1.0))
        projected = c - np.outer(loading, loading) / total
    else:
        common, projected = 0.0, c
    spec = cosine_from_gram(_offdiagonal_double_centred(projected))
    off = upper(spec) if n_kds > 1 else np.zeros(0)
    return Decomposition(common, 1.0 - common, float(off.mean()) if len(off) else float("nan"),
                         float(off.std()) if len(off) else float("nan")), spec


def _offdiagonal_double_centred(gram: np.ndarray) -> np.ndarray:
    """The off-diagonal entries less their row and column means (plus the grand mean); the diagonal kept.

    The common direction is estimated from the KDs themselves, so each u_k^⊥ carries −(its own part of the mean)
    and every off-diagonal product a term −(b_k + b_l) with b_k ∝ ‖u_k^⊥‖² / K: additive in k and l, and it
    follows the modules whenever the size of the KD-specific part does. Double-centring the off-diagonal removes any
    such additive term exactly and leaves block (cluster) structure; the diagonal keeps each KD's own energy.
    """
    n = len(gram)
    if n < 3:
        return gram
    off = gram.astype(np.float64).copy()
    diagonal = np.diag(off).copy()
    np.fill_diagonal(off, 0.0)
    rows = off.sum(axis=1) / (n - 1)
    grand = off.sum() / (n * (n - 1))
    # least-squares additive fit a + b_k + b_l to the off-diagonal: b_k = (n−1)/(n−2)·(row_k − grand)
    b = (n - 1) / (n - 2) * (rows - grand)
    out = off - b[:, None] - b[None, :] - grand
    np.fill_diagonal(out, diagonal)
    return out


def within_cluster_mantel(a: np.ndarray, b: np.ndarray, labels: np.ndarray, n_permutations: int,
                          seed: int) -> StudentizedTest:
    """Studentized one-sided Mantel r(a, b) over same-cluster pairs only (clusters ≥ 1), KD labels of `b` permuted
    within clusters.

    The Mantel r over all pairs and the same − cross contrast both read mostly the cluster blocks, so they are one
    piece of evidence, not two. This r asks what they cannot: within a cluster, do KDs with more similar outputs
    route more similarly (graded tracking), or is routing shared by the cluster as a block (r ≈ 0)? Permuting
    within clusters keeps the blocks, so the null is "no graded tracking within clusters". NaN without same-cluster
    pairs.
    """
    keep = labels > 0
    a, b, lab = a[np.ix_(keep, keep)].astype(np.float64), b[np.ix_(keep, keep)].astype(np.float64), labels[keep]
    n = len(lab)
    mask = (lab[:, None] == lab[None, :]) & ~np.eye(n, dtype=bool)
    if mask.sum() < 6:
        return StudentizedTest(float("nan"), float("nan"), float("nan"), n_permutations)
    am, bm = np.where(mask, a, 0.0), np.where(mask, b, 0.0)
    own = mask.sum(axis=1).astype(np.float64)  # same-cluster partners of each KD

    def r_and_loo(rxy, ry, ryy):
        rx, rxx = am.sum(axis=1), (am**2).sum(axis=1)
        n_pairs = own.sum() / 2
        totals = [v.sum(axis=-1, keepdims=True) / 2 for v in (rx, ry, rxx, ryy, rxy)]
        r = _pearson_from_sums(n_pairs, *(t[..., 0] for t in totals))
        loo = _pearson_from_sums(n_pairs - own, *(t - row for t, row in zip(totals, (rx, ry, rxx, ryy, rxy))))
        return r, loo

    ry, ryy = bm.sum(axis=1), (bm**2).sum(axis=1)
    r, loo = r_and_loo((am * b).sum(axis=1)[None], ry[None], ryy[None])
    r, se = float(r[0]), float(jackknife_se(loo)[0])
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(lab == c) for c in np.unique(lab)]
    null = np.empty(n_permutations)
    for t in range(n_permutations):
        perm = np.arange(n)
        for g in groups:
            perm[g] = rng.permutation(g)
        moved = b[np.ix_(perm, perm)]
        r_p, loo_p = r_and_loo((am * moved).sum(axis=1)[None], ry[perm][None], ryy[perm][None])
        with np.errstate(invalid="ignore", divide="ignore"):
            null[t] = r_p[0] / jackknife_se(loo_p)[0]
    observed = r / se if se > 0 else float("nan")
    return StudentizedTest(r, se, _p_greater(observed, null), n_permutations)


def cluster_level(a: np.ndarray, b: np.ndarray, labels: np.ndarray, n_permutations: int, seed: int) -> ClusterLevel:
    """Pearson r between the between-cluster means of `a` and `b` ([K, K]; clusters ≥ 1, pairs of different
    clusters only), one-sided p from permuting the cluster identities of `b`'s [C, C] mean matrix.

    Same-cluster blocks are left out: they are what the Mantel r and the contrast already read. NaN with fewer
    than 3 clusters (fewer than 3 cluster pairs).
    """
    keep = labels > 0
    lab = labels[keep]
    clusters = np.unique(lab)
    n = len(clusters)
    if n < 3:
        return ClusterLevel(n, n * (n - 1) // 2, float("nan"), float("nan"), n_permutations)
    onehot = (lab[:, None] == clusters).astype(np.float64)  # [K', C]
    sizes = onehot.sum(axis=0)

    def means(matrix):  # [C, C] mean over the pairs of KDs in clusters c ≠ d
        return onehot.T @ matrix[np.ix_(keep, keep)].astype(np.float64) @ onehot / np.outer(sizes, sizes)

    mean_a, mean_b = means(a), means(b)
    i, j = np.triu_indices(n, k=1)
    x = _zscore(mean_a[i, j])

    def r_of(m):
        return float(x @ _zscore(m[i, j]) / len(x))

    r = r_of(mean_b)
    rng = np.random.default_rng(seed)
    null = np.array([r_of(mean_b[np.ix_(p, p)]) for p in (rng.permutation(n) for _ in range(n_permutations))])
    return ClusterLevel(n, len(i), r, _p_greater(r, null), n_permutations)


# ---------------------------------------------------------------- routing by depth
def routing_by_depth(blocks: Sequence[JacobianShards], c_out: np.ndarray, labels: np.ndarray, n_permutations: int,
                     seed: int) -> tuple[DepthRouting, ...]:
    """Where in depth routing takes the output clusters' structure: for each backbone block's Jacobians (`blocks`,
    in depth order, [D, H] per KD), C_jac^(ℓ) from their streamed Gram, split into common and KD-specific parts as
    the output's (`decompose`), and the deciding Mantel and contrast on the KD-specific part.

    One Gram [K, K] alive at a time. A block whose Jacobians are the same for every KD (e.g. an identity block on
    the residual stream: ∂h/∂p = I) has common share 1 and an empty KD-specific part: its r and p are NaN.
    """
    found = []
    for depth, block in enumerate(blocks, start=1):
        gram = stream_gram(block)
        decomposition, specific = decompose(gram)
        with np.errstate(invalid="ignore", divide="ignore"):
            found.append(DepthRouting(depth, decomposition, mantel(c_out, specific, n_permutations, seed),
                                      cluster_contrast(specific, labels, n_permutations, seed),
                                      pearson(c_out, cosine_from_gram(gram))))
    return tuple(found)


# ---------------------------------------------------------------- linearity
def linearity(delta_y: np.ndarray, linear_prediction: np.ndarray) -> pd.Series:
    """Per KD, the share of ΔY_k explained by J_k·(p_k − p_ctrl): 1 − ‖ΔY − J·Δp‖² / ‖ΔY‖²."""
    residual = ((delta_y - linear_prediction) ** 2).sum(axis=1)
    return pd.Series(1 - residual / np.maximum((delta_y**2).sum(axis=1), 1e-300))


# ---------------------------------------------------------------- the evidence the verdict reads


def spread(c_out: np.ndarray, c_jac: np.ndarray) -> Spread:
    jac, out = upper(c_jac).astype(np.float64), upper(c_out).astype(np.float64)
    return Spread(float(jac.std()), float(jac.mean()), float(out.std()), float(out.mean()))


def core_evidence(c_out: np.ndarray, c_jac: np.ndarray, labels: np.ndarray, n_permutations: int, n_bootstrap: int,
                  seed: int, gram: np.ndarray | None = None) -> RoutingEvidence:
    """The statistics the call rests on (what the calibration replicates compute).

    Routing is first split into its common and KD-specific parts (`decompose`, from `gram`, the Jacobians' Gram;
    None: `c_jac` is taken as the Gram of unit-norm Jacobians); the deciding Mantel, contrast and the within-cluster
    Mantel are computed on the KD-specific matrix C_jac^spec, the raw C_jac's Mantel and contrast beside them.
    """
    decomposition, c_spec = decompose(c_jac if gram is None else gram)
    return RoutingEvidence(
        n_kds=int(len(labels)), n_pairs=int(len(upper(c_out))),
        mantel_pearson=mantel(c_out, c_spec, n_permutations, seed, "pearson"),
        mantel_spearman=mantel(c_out, c_spec, n_permutations, seed, "spearman"),
        pearson_ci=kd_bootstrap_ci(c_out, c_spec, n_bootstrap, seed) if n_bootstrap else (float("nan"),) * 2,
        contrast=cluster_contrast(c_spec, labels, n_permutations, seed),
        spread=spread(c_out, c_jac),
        decomposition=decomposition,
        within_mantel=within_cluster_mantel(c_out, c_spec, labels, n_permutations, seed),
        raw_mantel=mantel(c_out, c_jac, n_permutations, seed, "pearson"),
        raw_contrast=cluster_contrast(c_jac, labels, n_permutations, seed),
        cluster_level=cluster_level(c_out, c_spec, labels, n_permutations, seed))


def routing_evidence(c_out: np.ndarray, c_jac: np.ndarray, c_rep: np.ndarray, labels: np.ndarray, n_permutations: int,
                     n_bootstrap: int, seed: int, gram: np.ndarray | None = None) -> RoutingEvidence:
    """`core_evidence` plus the descriptive statistics that involve the encoder geometry C_rep."""
    core = core_evidence(c_out, c_jac, labels, n_permutations, n_bootstrap, seed, gram)
    return replace(core, partial_mantel=partial_mantel(c_jac, c_out, c_rep, n_permutations, seed),
                   mantel_out_rep=mantel(c_out, c_rep, n_permutations, seed, "pearson"),
                   keyed_lookup_r=pearson(c_jac, c_out * c_rep))

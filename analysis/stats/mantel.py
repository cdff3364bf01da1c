"""The Mantel family: does routing similarity track output similarity, over KD pairs, within clusters and between
them?

Matrices are K × K similarities between KDs; statistics use their upper triangles (`stats.pairs`). The studentized
tests (`mantel`, `partial_mantel`, `within_cluster_mantel`) get their p from `stats.nulls.refer`; `kd_bootstrap_ci`
resamples KDs; `cluster_level` permutes cluster identities.
"""

from __future__ import annotations

import numpy as np

from ..results import ClusterLevel, StudentizedTest
from .nulls import PERMUTATION_BATCH, centred_sum_and_variance, normal_z, p_greater, permutations, refer
from .pairs import (
    block_reader,
    jackknife_se,
    offdiagonal_moments,
    pair_sums,
    pearson_and_leave_one_out,
    pearson_from_sums,
    rank_matrix,
    row_blocks,
    zero_diagonal,
)


BATCH_ENTRIES = 1 << 22  # float64 entries of one batch of permuted cluster blocks (32 MiB)


def _zeroed(matrix: np.ndarray) -> np.ndarray:
    """A float64 copy of `matrix` [K, K] with its diagonal 0: what `_products_under_permutations` reads, made once
    per test rather than once per batch of permutations."""
    copy = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(copy, 0.0)
    return copy


def _products_under_permutations(fixed: np.ndarray, moving: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """Row sums Σ_l fixed[k, l]·moving[π_k, π_l] for each permutation π [B, K] → [B, K]; `fixed` and `moving`
    `_zeroed`. One permuted copy [K, K] at a time (two `take`s: 1.5× faster than one fancy index at K = 3,000)."""
    return np.stack([(fixed * moving.take(p, axis=0).take(p, axis=1)).sum(axis=1) for p in perms])


def mantel(a: np.ndarray, b: np.ndarray, n_permutations: int, seed: int, method: str = "pearson",
           reference: str = "permutation") -> StudentizedTest:
    """Studentized one-sided Mantel test (r > 0) between two K × K similarity matrices; KD labels of `b` permuted.

    statistic: Pearson (or Spearman: Pearson of the ranked off-diagonal entries) r of the upper triangles;
    standard_error: its delete-one-KD jackknife SE (for Spearman, of the Pearson r of the fixed ranks). reference
    "permutation": the test statistic r / SE is recomputed for every permutation, O(n_permutations · K²), one
    permuted copy at a time (K = 1,035, 9,999 permutations: about a minute); "normal": `normal_z` against N(0, 1), two
    blocked passes (K = 10,000: seconds), a p near α decided by `n_permutations` permutations instead
    (`refer`; the caller passes BORDERLINE_PERMUTATIONS, 0 for N(0, 1) alone).
    """
    if method == "spearman":
        a, b = rank_matrix(a), rank_matrix(b)
    n = len(a)
    x, y = block_reader(a), block_reader(b)
    sums = pair_sums(x, y, n)
    rx, rxx, ry, ryy, rxy = sums
    r, loo = pearson_and_leave_one_out(rx, rxx, ry, ryy, rxy)
    se = float(jackknife_se(loo))

    def permuted() -> float:
        null, fixed, moving = [], _zeroed(a), _zeroed(b)
        for perms in permutations(n, n_permutations, seed, PERMUTATION_BATCH):
            r_perm, loo_perm = pearson_and_leave_one_out(rx, rxx, ry[perms], ryy[perms],
                                                         _products_under_permutations(fixed, moving, perms))
            null.append(r_perm / jackknife_se(loo_perm))
        return p_greater(float(r) / se if se > 0 else float("nan"), np.concatenate(null))

    return StudentizedTest(float(r), se, *refer(reference, n_permutations, lambda: normal_z(x, y, n, sums), permuted))


def partial_mantel(a: np.ndarray, b: np.ndarray, given: np.ndarray, n_permutations: int, seed: int,
                   reference: str = "permutation") -> StudentizedTest:
    """Studentized partial Mantel r(a, b | given), one-sided; KD labels of `a` permuted (Smouse et al. 1986).

    Descriptive only: under a shared cause (a and b both driven by `given`) no permutation scheme keeps its level
    (Guillot & Rousset 2013), so the verdict never reads it. The normal reference reads its numerator
    r_ab − r_ac·r_bc, the pair sum of z(a) with the residual z(b) − r_bc·z(given) (z: off-diagonal z-scores), with
    `normal_z`.
    """
    n = len(a)
    read_a, read_b, read_c = block_reader(a), block_reader(b), block_reader(given)
    rb, rbb, rc, rcc, rbc = pair_sums(read_b, read_c, n)
    _, _, ra, raa, rba = pair_sums(read_b, read_a, n)
    rca = pair_sums(read_c, read_a, n)[4]
    r_bc, loo_bc = pearson_and_leave_one_out(rb, rbb, rc, rcc, rbc)
    r_ab, loo_ab = pearson_and_leave_one_out(rb, rbb, ra, raa, rba)
    r_ac, loo_ac = pearson_and_leave_one_out(rc, rcc, ra, raa, rca)
    value = float(_partial_from(r_ab, r_ac, r_bc))
    se = float(jackknife_se(_partial_from(loo_ab, loo_ac, loo_bc)))

    def studentized(perms, zeroed):
        fixed_b, fixed_c, moving = zeroed
        r_ab, loo_ab = pearson_and_leave_one_out(rb, rbb, ra[perms], raa[perms],
                                                 _products_under_permutations(fixed_b, moving, perms))
        r_ac, loo_ac = pearson_and_leave_one_out(rc, rcc, ra[perms], raa[perms],
                                                 _products_under_permutations(fixed_c, moving, perms))
        return _partial_from(r_ab, r_ac, r_bc) / jackknife_se(_partial_from(loo_ab, loo_ac, loo_bc))

    def permuted() -> float:
        zeroed = _zeroed(b), _zeroed(given), _zeroed(a)
        null = np.concatenate([studentized(p, zeroed)
                               for p in permutations(n, n_permutations, seed, PERMUTATION_BATCH)])
        return p_greater(value / se if se > 0 else float("nan"), null)

    def z() -> float:
        (mean_b, sd_b), (mean_c, sd_c) = offdiagonal_moments(b), offdiagonal_moments(given)

        def residual(rows: slice) -> np.ndarray:
            return zero_diagonal((read_b(rows) - mean_b) / sd_b - r_bc * (read_c(rows) - mean_c) / sd_c, rows)

        return normal_z(residual, read_a, n)

    return StudentizedTest(value, se, *refer(reference, n_permutations, z, permuted))


def _partial_from(r_ab, r_ac, r_bc):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r_ab - r_ac * r_bc) / np.sqrt(np.clip((1 - r_ac**2) * (1 - r_bc**2), 1e-12, None))


def kd_bootstrap_ci(a: np.ndarray, b: np.ndarray, n_bootstrap: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the Pearson r of the upper triangles, resampling KDs (not pairs) with replacement.

    Pairs of a KD with a copy of itself are dropped. A resample that draws KD k c_k times holds c_k·c_l copies of
    pair (k, l), so each of its pair sums is a quadratic form ½·cᵀ Q c over Q ∈ {x, y, x², y², x·y} (x, y the
    off-diagonal z-scores, diagonal 0) with (n² − Σ c_k²)/2 pairs: all resamples [B, K] go through one matrix
    product per row block of Q. Cost: 5·B·K² multiply-adds in BLAS (K = 10,000, B = 1,000: seconds to a minute);
    memory: the counts [B, K] and a few row blocks.
    """
    rng = np.random.default_rng(seed)
    n = a.shape[0]
    counts = np.stack([np.bincount(rng.integers(n, size=n), minlength=n) for _ in range(n_bootstrap)]).astype(np.float64)
    (mean_a, sd_a), (mean_b, sd_b) = offdiagonal_moments(a), offdiagonal_moments(b)
    read_a, read_b = block_reader(a), block_reader(b)
    sums = np.zeros((5, n_bootstrap))
    for rows in row_blocks(n, n):
        # z-scores keep the sums small: a raw C_jac near 1 everywhere would cancel in n·Σx² − (Σx)².
        x = zero_diagonal((read_a(rows) - mean_a) / sd_a, rows)
        y = zero_diagonal((read_b(rows) - mean_b) / sd_b, rows)
        for j, q in enumerate((x, y, x * x, y * y, x * y)):
            sums[j] += ((counts @ q.T) * counts[:, rows]).sum(axis=1) / 2
    n_pairs = (n**2 - (counts**2).sum(axis=1)) / 2
    values = pearson_from_sums(n_pairs, *sums)
    tail = (1 - level) / 2
    return float(np.nanquantile(values, tail)), float(np.nanquantile(values, 1 - tail))


def within_cluster_mantel(a: np.ndarray, b: np.ndarray, labels: np.ndarray, n_permutations: int, seed: int,
                          reference: str = "permutation") -> StudentizedTest:
    """Studentized one-sided Mantel r(a, b) over same-cluster pairs only (clusters ≥ 1), KD labels of `b` permuted
    within clusters.

    The Mantel r over all pairs and the same − cross contrast both read mostly the cluster blocks, so they are one
    piece of evidence, not two. This r asks what they cannot: within a cluster, do KDs with more similar outputs
    route more similarly (graded tracking), or is routing shared by the cluster as a block (r ≈ 0)? Permuting
    within clusters keeps the blocks, so the null is "no graded tracking within clusters". NaN without same-cluster
    pairs. The permutations move entries inside the cluster blocks only: O(n_permutations · Σ_c K_c²) time, the
    blocks (at most one K × K in all) in memory. reference "normal": within-cluster permutations leave each
    cluster's block means fixed, so the part of r that varies is the sum over clusters of each block's centred pair
    sum (`centred_sum_and_variance` per cluster, summed, against N(0, 1); a p near α permuted within clusters, as
    `refer` does for every test); `core_evidence` does not use it, because it rejected 11 % in a null world
    (benchmarks/normal_reference.py: with few clusters the sum has few terms that count, and a skewed one).
    """
    index = np.flatnonzero(labels > 0)
    lab = labels[index]
    n = len(lab)
    groups = [np.flatnonzero(lab == c) for c in np.unique(lab)]
    sums, own = np.zeros((5, n)), np.zeros(n)  # row sums over each KD's same-cluster partners; their number
    for g in groups:
        sums[:, g] = pair_sums(block_reader(a, index[g]), block_reader(b, index[g]), len(g))
        own[g] = len(g) - 1
    if own.sum() < 6:
        def undefined() -> float:
            return float("nan")

        return StudentizedTest(float("nan"), float("nan"), *refer(reference, n_permutations, undefined, undefined))
    rx, rxx, ry, ryy, rxy = sums

    def r_and_loo(rxy, ry, ryy):
        n_pairs = own.sum() / 2
        totals = [v.sum(axis=-1, keepdims=True) / 2 for v in (rx, ry, rxx, ryy, rxy)]
        r = pearson_from_sums(n_pairs, *(t[..., 0] for t in totals))
        loo = pearson_from_sums(n_pairs - own, *(t - row for t, row in zip(totals, (rx, ry, rxx, ryy, rxy))))
        return r, loo

    r, loo = r_and_loo(rxy[None], ry[None], ryy[None])
    r, se = float(r[0]), float(jackknife_se(loo)[0])

    def z() -> float:
        parts = np.array([centred_sum_and_variance(block_reader(a, index[g]), block_reader(b, index[g]), len(g),
                                                   tuple(sums[:, g])) for g in groups])
        total, variance = parts.sum(axis=0)
        return total / np.sqrt(variance) if variance > 0 else float("nan")

    def permuted() -> float:
        # The cluster blocks of a and b (Σ_c K_c² entries each, at most one K × K): a within-cluster permutation
        # moves entries inside them only. The permutations are drawn in the order of one draw per cluster per
        # permutation (the stream does not depend on the batching), then scored a batch at a time: [batch, K_c, K_c]
        # per cluster, at most PERMUTATION_BATCH permutations and BATCH_ENTRIES entries of the largest block.
        blocks = [(block_reader(a, index[g])(slice(0, len(g))), block_reader(b, index[g])(slice(0, len(g))))
                  for g in groups]
        rng = np.random.default_rng(seed)
        local = [np.empty((n_permutations, len(g)), dtype=np.intp) for g in groups]
        for t in range(n_permutations):
            for order, g in zip(local, groups):
                order[t] = rng.permutation(len(g))
        null = np.empty(n_permutations)
        step = max(1, min(PERMUTATION_BATCH, BATCH_ENTRIES // max(len(g) for g in groups) ** 2))
        for start in range(0, n_permutations, step):
            batch = slice(start, min(start + step, n_permutations))
            size = batch.stop - batch.start
            perm = np.broadcast_to(np.arange(n), (size, n)).copy()
            permuted_rxy = np.empty((size, n))
            for g, order, (block_a, block_b) in zip(groups, local, blocks):
                o = order[batch]
                perm[:, g] = g[o]
                permuted_rxy[:, g] = (block_a[None] * block_b[o[:, :, None], o[:, None, :]]).sum(axis=2)
            r_p, loo_p = r_and_loo(permuted_rxy, ry[perm], ryy[perm])
            with np.errstate(invalid="ignore", divide="ignore"):
                null[batch] = r_p / jackknife_se(loo_p)
        observed = r / se if se > 0 else float("nan")
        return p_greater(observed, null)

    return StudentizedTest(r, se, *refer(reference, n_permutations, z, permuted))


def cluster_level(a: np.ndarray, b: np.ndarray, labels: np.ndarray, n_permutations: int, seed: int) -> ClusterLevel:
    """Pearson r between the between-cluster means of `a` and `b` ([K, K]; clusters ≥ 1, pairs of different
    clusters only), one-sided p from permuting the cluster identities of `b`'s [C, C] mean matrix.

    Same-cluster blocks are left out: they are what the Mantel r and the contrast already read. NaN with fewer
    than 3 clusters (fewer than 3 cluster pairs). The means are summed row block by row block (O(K²·C)); the
    permutations move C × C means, so they stay at any K.
    """
    clusters = np.unique(labels[labels > 0])
    n = len(clusters)
    if n < 3:
        return ClusterLevel(n, n * (n - 1) // 2, float("nan"), float("nan"), n_permutations)
    onehot = (labels[:, None] == clusters).astype(np.float64)  # [K, C]; the weak-effect group 0 in no column
    sizes = onehot.sum(axis=0)

    def means(matrix):  # [C, C] mean over the pairs of KDs in clusters c ≠ d
        total = np.zeros((n, n))
        for rows in row_blocks(len(labels), len(labels)):
            total += onehot[rows].T @ (np.asarray(matrix[rows], dtype=np.float64) @ onehot)
        return total / np.outer(sizes, sizes)

    mean_a, mean_b = means(a), means(b)
    i, j = np.triu_indices(n, k=1)
    x = _zscore(mean_a[i, j])
    r = float(x @ _zscore(mean_b[i, j]) / len(x))
    rng = np.random.default_rng(seed)
    perms = np.array([rng.permutation(n) for _ in range(n_permutations)], dtype=np.intp).reshape(n_permutations, n)
    null = _zscore(mean_b[perms[:, i], perms[:, j]]) @ x / len(x)
    return ClusterLevel(n, len(i), r, p_greater(r, null), n_permutations)


def _zscore(values: np.ndarray) -> np.ndarray:
    """z-scores along the last axis (population SD; a constant row left centred, all zeros)."""
    centred = values - values.mean(axis=-1, keepdims=True)
    sd = np.sqrt((centred**2).mean(axis=-1, keepdims=True))
    return np.divide(centred, sd, out=np.zeros_like(centred), where=sd > 0)

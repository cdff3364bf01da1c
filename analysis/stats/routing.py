"""Routing statistics: does Jacobian (routing) similarity track output similarity?

Matrices are K × K similarities between KDs; statistics use their upper triangles. Pairs
share KDs, so pair-level p-values are not valid: inference permutes KD labels (Mantel),
resamples KDs (bootstrap CI) or permutes cluster labels. The seed's pair-level rank-sum
test is computed too, and labelled anti-conservative.

At genome scale (K ≈ 10,000: 5·10⁷ pairs, 800 MB per float64 K × K matrix) every permutation costs O(K²), so from
`normal_reference_kds` KDs on the studentized tests refer their statistic to N(0, 1) instead
(`centred_sum_and_variance`, chosen by the agreement study in benchmarks/normal_reference.py), and permute only where
that p is near α (`BORDERLINE`); statistics read the matrices in row blocks and allocate no K × K array beyond those
their docstrings name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import pandas as pd
from scipy.spatial.distance import squareform
from scipy.stats import mannwhitneyu, norm, rankdata

from ..config import AnalysisConfig
from ..results import (
    ClusterContrast,
    ClusterLevel,
    Decomposition,
    DepthRouting,
    RoutingEvidence,
    Spread,
    StudentizedTest,
)

NORMAL_REFERENCE_KDS = AnalysisConfig.normal_reference_kds  # the config's default switch (`reference_for`)


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
    """Cosines [K, K] float64 from a Gram matrix (a new array; the Gram is not changed)."""
    return _normalise(np.array(gram, dtype=np.float64))


def _normalise(gram: np.ndarray) -> np.ndarray:
    """A float64 Gram [K, K] turned into its cosines in place, row block by row block: g_kl / √(g_kk g_ll), clipped
    to [−1, 1], diagonal 1 (a zero row stays 0 off the diagonal)."""
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    safe = np.where(norms > 0, norms, 1.0)
    for rows in _row_blocks(len(gram), len(gram)):
        gram[rows] /= np.outer(safe[rows], safe)
    np.clip(gram, -1, 1, out=gram)
    np.fill_diagonal(gram, 1.0)
    return gram


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
# Every statistic below is a function of sums over the K(K−1)/2 KD pairs. They read the K × K matrices in row blocks
# of at most BLOCK_BYTES (float64 copies, diagonal zeroed), so besides their inputs a statistic holds a few blocks,
# never another K × K array (permutations, below `normal_reference_kds` or near α, hold two zeroed copies and one
# permuted copy at a time).
BLOCK_BYTES = 32 << 20
Reader = Callable[[slice], np.ndarray]


def _row_blocks(n_rows: int, n_columns: int) -> Iterator[slice]:
    step = max(1, BLOCK_BYTES // (8 * max(n_columns, 1)))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _zero_diagonal(block: np.ndarray, rows: slice) -> np.ndarray:
    """`block` [rows, K'] of a symmetric matrix with its entries on the diagonal (k, k) set to 0, in place."""
    block[np.arange(block.shape[0]), np.arange(rows.start, rows.stop)] = 0.0
    return block


def _reader(matrix: np.ndarray, index: np.ndarray | None = None) -> Reader:
    """Row blocks of `matrix` [K, K] (any float dtype), or of its sub-matrix on the KDs `index`, as float64 copies
    [rows, K'] with the diagonal zeroed."""
    def read(rows: slice) -> np.ndarray:
        block = matrix[rows] if index is None else matrix[np.ix_(index[rows], index)]
        return _zero_diagonal(np.array(block, dtype=np.float64), rows)
    return read


def upper(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle of a symmetric [K, K] matrix, row by row [K(K−1)/2]."""
    return squareform(matrix, checks=False)


def _upper_values(read: Reader, n: int) -> np.ndarray:
    """The upper triangle of a read matrix [n, n], row by row [n(n−1)/2] (as `upper`), block by block."""
    parts = [read(rows)[np.arange(rows.start, rows.stop)[:, None] < np.arange(n)] for rows in _row_blocks(n, n)]
    return np.concatenate(parts) if parts else np.zeros(0)


def offdiagonal_moments(matrix: np.ndarray) -> tuple[float, float]:
    """Mean and SD (population) of the off-diagonal entries of a symmetric [K, K] matrix, in two passes."""
    n = len(matrix)
    if n < 2:
        return float("nan"), float("nan")
    read = _reader(matrix)
    mean = sum(read(rows).sum() for rows in _row_blocks(n, n)) / (n * (n - 1))
    squares = sum((_zero_diagonal(read(rows) - mean, rows) ** 2).sum() for rows in _row_blocks(n, n))
    return float(mean), float(np.sqrt(squares / (n * (n - 1))))


def rank_matrix(matrix: np.ndarray) -> np.ndarray:
    """Off-diagonal entries replaced by their ranks (for Spearman Mantel); the diagonal 0."""
    return squareform(rankdata(upper(matrix)))


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


def _pair_sums(x: Reader, y: Reader, n: int) -> tuple[np.ndarray, ...]:
    """Off-diagonal row sums (rx, rxx, ry, ryy, rxy) [n] each of x, x², y, y², x·y, in one blocked pass."""
    sums = np.zeros((5, n))
    for rows in _row_blocks(n, n):
        bx, by = x(rows), y(rows)
        sums[:, rows] = bx.sum(1), (bx * bx).sum(1), by.sum(1), (by * by).sum(1), (bx * by).sum(1)
    return tuple(sums)


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


def permutations(n_kds: int, n_permutations: int, seed: int, batch: int) -> Iterator[np.ndarray]:
    """Seeded KD-label permutations [b, K] in batches of at most `batch`."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_permutations, batch):
        yield np.argsort(rng.random((min(batch, n_permutations - start), n_kds)), axis=1)


PERMUTATION_BATCH = 64  # permutations drawn at a time (the draws do not depend on it)


def _p_greater(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p with the +1 correction; NaN if the statistic is undefined.

    Ties count as extreme within a relative tolerance of 1e-9 (float64 sums of the same values in another order).
    Undefined permuted statistics (NaN) count as not extreme but stay in the denominator.
    """
    if not np.isfinite(observed):
        return float("nan")
    tolerance = 1e-9 * max(1.0, abs(observed))
    return float((1 + np.sum(np.nan_to_num(null, nan=-np.inf) >= observed - tolerance)) / (1 + len(null)))


# ---------------------------------------------------------------- the normal reference
def reference_for(n_kds: int, normal_reference_kds: int) -> str:
    """The reference of the studentized tests on `n_kds` KDs: "normal" from the config's switch
    `normal_reference_kds` on (0: never), "permutation" below it."""
    return "normal" if 0 < normal_reference_kds <= n_kds else "permutation"


def centred_sum_and_variance(x: Reader, y: Reader, n: int,
                             sums: tuple[np.ndarray, ...] | None = None) -> tuple[float, float]:
    """The centred pair sum T = Σ_{k<l} (x_kl − x̄)(y_kl − ȳ) of two symmetric [n, n] matrices and V̂, its variance
    when y is unrelated to x; T / √V̂ ~ N(0, 1) under that null (`normal_z`). x is held fixed (outputs, a label
    design) and y is the matrix a permutation test would permute (routing).

    Each matrix splits exactly into KD main effects and a doubly-centred rest (Hoeffding): x_kl = x̄ + α_k + α_l + x'_kl
    with α the least-squares additive fit (Σ α = 0, every row of x' sums to 0), likewise y with β and y', so
    T = (n − 2)·Σ_k α_k β_k + Σ_{k<l} x'_kl y'_kl exactly. Its variance, each pair's y'² standing for that pair's own
    variance (robust to the unequal spreads of a per-KD lookup, as the studentized permutation is):
    V̂ = (n − 2)²·Σ_k α_k² β_k² + Σ_{k<l} [x'_kl² + λ·(2 α_k α_l + 2 (α_k + α_l)·x'_kl)]·y'_kl². The λ term: when y's
    pair noise also moves its row means (a raw C_jac; a cluster's block of C_jac^spec), the row means of k and l share
    the noise of pair (k, l) and each shares it with the pair term; when y is itself doubly centred (C_jac^spec: its
    rows sum to ≈ 0) its row means carry none. λ = min(1, (n − 2)²·Σ β² / Σ_{k≠l} y'²), how far the row means'
    spread reaches what pair noise alone would give them: ≈ 0 for C_jac^spec, ≈ 1 for pure pair noise, capped with
    real KD main effects. Dropping it (λ = 0) rejected 11–15 % in the calibration's "lookup-singletons" world (raw
    and within-cluster Mantel, K = 200 and 1,000); λ = 1 throughout made the C_jac^spec tests conservative there
    (2–3 %).

    Why not r over its delete-one jackknife SE: when y has no KD main effects (C_jac^spec) the pair part decides, and
    the jackknife counts each pair's variance twice — r / SE then has SD ≈ 1/√2 under the null (measured: 0.61–0.75
    in the calibration's null worlds at K = 200), a test of size ≈ 1 % at α = 5 %. The permutation reference does not
    mind (the permuted statistics carry the same factor); N(0, 1) does.

    `sums`: `_pair_sums(x, y, n)` when already computed. Two blocked passes (one with `sums`). (0, 0) for n < 3: a
    single pair is its own mean.
    """
    if n < 3:
        return 0.0, 0.0
    rx, _, ry, _, rxy = _pair_sums(x, y, n) if sums is None else sums
    mean_x, mean_y = rx.sum() / (n * (n - 1)), ry.sum() / (n * (n - 1))
    alpha, beta = (rx - (n - 1) * mean_x) / (n - 2), (ry - (n - 1) * mean_y) / (n - 2)
    total = float((rxy - mean_y * rx - mean_x * ry + (n - 1) * mean_x * mean_y).sum() / 2)
    pairs = shared = noise = 0.0
    for rows in _row_blocks(n, n):
        rest_x = x(rows) - mean_x - alpha[rows, None] - alpha[None, :]
        rest_y2 = _zero_diagonal((y(rows) - mean_y - beta[rows, None] - beta[None, :]) ** 2, rows)
        pairs += (rest_x**2 * rest_y2).sum() / 2
        shared += ((alpha[rows, None] * alpha[None, :] + (alpha[rows, None] + alpha[None, :]) * rest_x)
                   * rest_y2).sum()
        noise += rest_y2.sum()
    share = min(1.0, (n - 2) ** 2 * float((beta**2).sum()) / noise) if noise > 0 else 0.0
    return total, (n - 2) ** 2 * float((alpha**2 * beta**2).sum()) + pairs + share * shared


def normal_z(x: Reader, y: Reader, n: int, sums: tuple[np.ndarray, ...] | None = None) -> float:
    """T / √V̂ of `centred_sum_and_variance` (NaN where V̂ = 0): the normal reference's z."""
    total, variance = centred_sum_and_variance(x, y, n, sums)
    return total / np.sqrt(variance) if variance > 0 else float("nan")


def _normal_p(z: float) -> float:
    return float(norm.sf(z)) if np.isfinite(z) else float("nan")


# Near α the normal tail is not trusted. In the agreement study's per-KD lookup worlds at K = 3,000 the normal
# reference alone rejected up to 10–13 % at α = 0.05 (60 replicates a world; benchmarks/normal_reference.py): the
# null of the centred pair sum there is skewed (the lookup routes through few input directions), which studentizing
# does not undo. A normal p inside BORDERLINE is therefore replaced by the permutation p of the same studentized
# statistic; outside it N(0, 1) decides for any α from 0.005 to 0.1 (p < 0.001 or > 0.25 is far from it either
# way). Under the null about a quarter of the tests permute, on real effects almost none: the cost stays near the
# normal reference's, the size near the permutation test's.
BORDERLINE = (0.001, 0.25)
BORDERLINE_PERMUTATIONS = 199  # the permutations a borderline p gets (the caller's count, if smaller)


def referred_permutations(reference: str, n_permutations: int) -> int:
    """The permutations a studentized test is given under `reference`: all `n_permutations` under "permutation";
    under "normal" at most BORDERLINE_PERMUTATIONS, spent only on a borderline p (`_normal_or_permuted`)."""
    return n_permutations if reference == "permutation" else min(n_permutations, BORDERLINE_PERMUTATIONS)


def _normal_or_permuted(z: float, n_permutations: int, permuted: Callable[[], float]) -> tuple[float, int, str]:
    """(p, permutations run, reference) of a test under the normal reference: Φ̄(z), "normal"; or, where that lies in
    BORDERLINE and `n_permutations` > 0, `permuted()` (the permutation p from `n_permutations` KD-label
    permutations, as under the permutation reference with the same seed), "normal+permutation"."""
    p = _normal_p(z)
    if n_permutations and BORDERLINE[0] <= p <= BORDERLINE[1]:
        return permuted(), n_permutations, "normal+permutation"
    return p, 0, "normal"


# ---------------------------------------------------------------- Mantel tests
def mantel(a: np.ndarray, b: np.ndarray, n_permutations: int, seed: int, method: str = "pearson",
           reference: str = "permutation") -> StudentizedTest:
    """Studentized one-sided Mantel test (r > 0) between two K × K similarity matrices; KD labels of `b` permuted.

    statistic: Pearson (or Spearman: Pearson of the ranked off-diagonal entries) r of the upper triangles;
    standard_error: its delete-one-KD jackknife SE (for Spearman, of the Pearson r of the fixed ranks). reference
    "permutation": the test statistic r / SE is recomputed for every permutation, O(n_permutations · K²), one
    permuted copy at a time (K = 1,035, 9,999 permutations: about a minute); "normal": `normal_z` against N(0, 1), two
    blocked passes (K = 10,000: seconds), a p near α decided by `n_permutations` permutations instead
    (`_normal_or_permuted`; the caller passes BORDERLINE_PERMUTATIONS, 0 for N(0, 1) alone).
    """
    if method == "spearman":
        a, b = rank_matrix(a), rank_matrix(b)
    n = len(a)
    x, y = _reader(a), _reader(b)
    sums = _pair_sums(x, y, n)
    rx, rxx, ry, ryy, rxy = sums
    r, loo = _pearson_and_leave_one_out(rx, rxx, ry, ryy, rxy)
    se = float(jackknife_se(loo))

    def permuted() -> float:
        null, fixed, moving = [], _zeroed(a), _zeroed(b)
        for perms in permutations(n, n_permutations, seed, PERMUTATION_BATCH):
            r_perm, loo_perm = _pearson_and_leave_one_out(rx, rxx, ry[perms], ryy[perms],
                                                          _products_under_permutations(fixed, moving, perms))
            null.append(r_perm / jackknife_se(loo_perm))
        return _p_greater(float(r) / se if se > 0 else float("nan"), np.concatenate(null))

    if reference == "normal":
        return StudentizedTest(float(r), se, *_normal_or_permuted(normal_z(x, y, n, sums), n_permutations, permuted))
    return StudentizedTest(float(r), se, permuted(), n_permutations)


def partial_mantel(a: np.ndarray, b: np.ndarray, given: np.ndarray, n_permutations: int, seed: int,
                   reference: str = "permutation") -> StudentizedTest:
    """Studentized partial Mantel r(a, b | given), one-sided; KD labels of `a` permuted (Smouse et al. 1986).

    Descriptive only: under a shared cause (a and b both driven by `given`) no permutation scheme keeps its level
    (Guillot & Rousset 2013), so the verdict never reads it. The normal reference reads its numerator
    r_ab − r_ac·r_bc, the pair sum of z(a) with the residual z(b) − r_bc·z(given) (z: off-diagonal z-scores), with
    `normal_z`.
    """
    n = len(a)
    read_a, read_b, read_c = _reader(a), _reader(b), _reader(given)
    rb, rbb, rc, rcc, rbc = _pair_sums(read_b, read_c, n)
    _, _, ra, raa, rba = _pair_sums(read_b, read_a, n)
    rca = _pair_sums(read_c, read_a, n)[4]
    r_bc, loo_bc = _pearson_and_leave_one_out(rb, rbb, rc, rcc, rbc)
    r_ab, loo_ab = _pearson_and_leave_one_out(rb, rbb, ra, raa, rba)
    r_ac, loo_ac = _pearson_and_leave_one_out(rc, rcc, ra, raa, rca)
    value = float(_partial_from(r_ab, r_ac, r_bc))
    se = float(jackknife_se(_partial_from(loo_ab, loo_ac, loo_bc)))

    def studentized(perms, zeroed):
        fixed_b, fixed_c, moving = zeroed
        r_ab, loo_ab = _pearson_and_leave_one_out(rb, rbb, ra[perms], raa[perms],
                                                  _products_under_permutations(fixed_b, moving, perms))
        r_ac, loo_ac = _pearson_and_leave_one_out(rc, rcc, ra[perms], raa[perms],
                                                  _products_under_permutations(fixed_c, moving, perms))
        return _partial_from(r_ab, r_ac, r_bc) / jackknife_se(_partial_from(loo_ab, loo_ac, loo_bc))

    def permuted() -> float:
        zeroed = _zeroed(b), _zeroed(given), _zeroed(a)
        null = np.concatenate([studentized(p, zeroed)
                               for p in permutations(n, n_permutations, seed, PERMUTATION_BATCH)])
        return _p_greater(value / se if se > 0 else float("nan"), null)

    if reference == "normal":
        (mean_b, sd_b), (mean_c, sd_c) = offdiagonal_moments(b), offdiagonal_moments(given)

        def residual(rows: slice) -> np.ndarray:
            return _zero_diagonal((read_b(rows) - mean_b) / sd_b - r_bc * (read_c(rows) - mean_c) / sd_c, rows)

        return StudentizedTest(value, se, *_normal_or_permuted(normal_z(residual, read_a, n), n_permutations, permuted))
    return StudentizedTest(value, se, permuted(), n_permutations)


def _partial_from(r_ab, r_ac, r_bc):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r_ab - r_ac * r_bc) / np.sqrt(np.clip((1 - r_ac**2) * (1 - r_bc**2), 1e-12, None))


def _pearson(x: Reader, y: Reader, n: int) -> float:
    rx, rxx, ry, ryy, rxy = _pair_sums(x, y, n)
    return float(_pearson_from_sums(n * (n - 1) / 2, rx.sum() / 2, ry.sum() / 2, rxx.sum() / 2, ryy.sum() / 2,
                                    rxy.sum() / 2))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of the upper triangles of two [K, K] matrices (blocked: no copy of either)."""
    return _pearson(_reader(a), _reader(b), len(a))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rank_matrix(a), rank_matrix(b))


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
    read_a, read_b = _reader(a), _reader(b)
    sums = np.zeros((5, n_bootstrap))
    for rows in _row_blocks(n, n):
        # z-scores keep the sums small: a raw C_jac near 1 everywhere would cancel in n·Σx² − (Σx)².
        x = _zero_diagonal((read_a(rows) - mean_a) / sd_a, rows)
        y = _zero_diagonal((read_b(rows) - mean_b) / sd_b, rows)
        for j, q in enumerate((x, y, x * x, y * y, x * y)):
            sums[j] += ((counts @ q.T) * counts[:, rows]).sum(axis=1) / 2
    n_pairs = (n**2 - (counts**2).sum(axis=1)) / 2
    values = _pearson_from_sums(n_pairs, *sums)
    tail = (1 - level) / 2
    return float(np.nanquantile(values, tail)), float(np.nanquantile(values, 1 - tail))


# ---------------------------------------------------------------- same- vs cross-cluster routing
def _contrast_from_rows(same_rows: np.ndarray, rows: np.ndarray, own_size: np.ndarray,
                        n_same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mean(same) − mean(cross) [B] (NaN without same-cluster pairs) and its delete-one-KD jackknife SE [B], from row
    sums of the similarity (zero diagonal) over each KD's same-cluster partners `same_rows` [B, n] and over all KDs
    `rows` [n], the size of each KD's cluster `own_size` [B, n] and the same-cluster pair count `n_same` [B].

    Dropping KD k removes its row sum s_k over same-cluster partners and t_k − s_k over cross-cluster partners, so
    every leave-one-out value comes from row sums: no loop over KDs.
    """
    n = rows.shape[-1]
    same_sum, total = same_rows.sum(axis=1) / 2, rows.sum() / 2
    n_pairs = n * (n - 1) / 2
    loo_same, loo_n_same = same_sum[:, None] - same_rows, n_same[:, None] - (own_size - 1)
    loo_cross, loo_n_cross = (total - rows[None]) - loo_same, (n_pairs - (n - 1)) - loo_n_same
    with np.errstate(invalid="ignore", divide="ignore"):
        difference = same_sum / n_same - (total - same_sum) / (n_pairs - n_same)
        loo = loo_same / loo_n_same - loo_cross / loo_n_cross
    loo = np.where(np.isfinite(loo), loo, np.nan)
    return difference, jackknife_se(loo)


def _rank_sum_greater(values: np.ndarray, chosen: np.ndarray) -> tuple[float, float]:
    """Mann–Whitney U of values[chosen] against values[~chosen] and its one-sided (greater) p, as
    scipy.stats.mannwhitneyu computes them (tie-corrected normal approximation with continuity correction; scipy
    itself, exact where it would be, when either group has ≤ 8 values). `values` [n] is sorted in place.

    One sort and two binary searches instead of ranking the concatenation: at K = 10,000 (5·10⁷ pairs) the
    working memory is `values` itself, not the several copies of it scipy's ranking makes.
    """
    n1 = int(chosen.sum())
    n2 = len(values) - n1
    if n1 <= 8 or n2 <= 8:
        result = mannwhitneyu(values[chosen], values[~chosen], alternative="greater")
        return float(result.statistic), float(result.pvalue)
    picked = np.sort(values[chosen])  # sorted needles: each search starts where the last ended (17× at 2·10⁶)
    values.sort()
    # the average rank of a value is (#smaller + #smaller-or-equal + 1) / 2 (1-based; ties share their mean rank)
    ranks = (np.searchsorted(values, picked, "left") + np.searchsorted(values, picked, "right") + 1) / 2
    u = float(ranks.sum() - n1 * (n1 + 1) / 2)
    tied = np.flatnonzero(values[1:] == values[:-1])  # i with values[i] == values[i + 1]; few unless values repeat
    # consecutive positions form one group of equal values: a run of m positions is a group of m + 1
    starts = np.flatnonzero(np.diff(tied, prepend=-2) != 1)
    groups = np.diff(np.append(starts, len(tied))) + 1.0
    tie_term = float((groups**3 - groups).sum())
    n = n1 + n2
    sd = np.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))))
    return u, float(norm.sf((u - n1 * n2 / 2 - 0.5) / sd))


def _labelling(lab: np.ndarray, labelings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """own_size [B, n] (the size of each KD's cluster) and n_same [B] (same-cluster pairs) of B labelings [B, n] that
    permute the labels `lab` [n]."""
    clusters, counts = np.unique(lab, return_counts=True)
    own_size = counts[np.searchsorted(clusters, labelings)].astype(np.float64)
    return own_size, (own_size - 1).sum(axis=-1) / 2


def cluster_contrast(similarity: np.ndarray, labels: np.ndarray, n_permutations: int, seed: int,
                     reference: str = "permutation") -> ClusterContrast:
    """Do same-cluster KD pairs have higher `similarity` than cross-cluster pairs?

    The test studentizes the difference: under a per-KD lookup (Model A) same-cluster C_jac has the same mean as
    cross-cluster C_jac but a larger spread, which breaks the exchangeability a raw-difference label permutation needs
    (it rejected ~20 % at α = 0.05 on the negative known answer); the studentized statistic is robust to that
    (Janssen 1997; Chung & Romano 2013). reference "permutation": cluster labels permuted over KDs; "normal": the
    difference is the pair sum of the similarity with W_kl = [same]/n_same − [cross]/n_cross, read by `normal_z`.
    """
    index = np.flatnonzero(labels > 0)
    lab, n = labels[index], len(index)
    read = _reader(similarity, index)
    values = _upper_values(read, n)
    same = _upper_values(lambda rows: lab[rows, None] == lab[None, :], n)
    n_same, n_cross = int(same.sum()), int((~same).sum())
    spread = float(values.std()) if len(values) else float("nan")
    mean_same = float(values[same].mean()) if n_same else float("nan")
    mean_cross = float(values[~same].mean()) if n_cross else float("nan")
    if n_same and n_cross:
        u, rank_sum_p = _rank_sum_greater(values, same)
        auc = u / (n_same * n_cross)
    else:
        auc = rank_sum_p = float("nan")
    del values, same
    rows_sum, same_rows = np.zeros(n), np.zeros(n)
    for rows in _row_blocks(n, n):
        block = read(rows)
        rows_sum[rows], same_rows[rows] = block.sum(1), np.where(lab[rows, None] == lab[None, :], block, 0.0).sum(1)
    own_size, pairs_same = _labelling(lab, lab[None])
    difference, se = (float(v[0]) for v in _contrast_from_rows(same_rows[None], rows_sum, own_size, pairs_same))
    unit = spread if spread > 0 else float("nan")

    def permuted() -> float:
        sim = similarity[np.ix_(index, index)].astype(np.float64)
        np.fill_diagonal(sim, 0.0)
        clusters = np.unique(lab)
        null = []
        for perms in permutations(n, n_permutations, seed, PERMUTATION_BATCH):
            relabelled = lab[perms]
            onehot = (relabelled[:, :, None] == clusters).astype(np.float64)  # [B, K, C]
            # each KD's similarity to every relabelled cluster, the batch in one GEMM: [K, K] @ [K, B·C] (37× the
            # einsum over [B, K, K, C] at K = 3,000); its own cluster's entry is the same-cluster row sum
            reach = (sim @ onehot.transpose(1, 0, 2).reshape(n, -1)).reshape(n, len(perms), len(clusters))
            d, s = _contrast_from_rows(np.einsum("kbc,bkc->bk", reach, onehot), rows_sum, *_labelling(lab, relabelled))
            with np.errstate(invalid="ignore", divide="ignore"):
                null.append(d / s)
        return _p_greater(difference / se if se > 0 else float("nan"), np.concatenate(null))

    if reference == "normal":
        def weights(rows: slice) -> np.ndarray:
            same_cluster = lab[rows, None] == lab[None, :]
            return _zero_diagonal(np.where(same_cluster, 1.0 / max(n_same, 1), -1.0 / max(n_cross, 1)), rows)

        z = normal_z(weights, read, n) if n_same and n_cross else float("nan")
        test = StudentizedTest(difference / unit, se / unit, *_normal_or_permuted(z, n_permutations, permuted))
    else:
        test = StudentizedTest(difference / unit, se / unit, permuted(), n_permutations)
    return ClusterContrast(n_same, n_cross, mean_same, mean_cross, difference, spread, auc, rank_sum_p, test,
                           n_same / max(n_same + n_cross, 1))


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
    `calibration`'s "identical-noise-modules" world); the projected one does not. Returns (Decomposition, C_jac^spec
    [K, K] float64). Memory: C_jac^spec is the one K × K array it allocates; every step after the cosines runs in
    place, row block by row block.
    """
    c = cosine_from_gram(gram)
    n_kds = len(c)
    loading = c.sum(axis=1)  # K ⟨u_k, ū⟩
    total = float(loading.sum())  # K² ‖ū‖²
    common = 0.0
    if total > 0:
        common = float(np.clip((loading**2).sum() / total / n_kds, 0.0, 1.0))
        for rows in _row_blocks(n_kds, n_kds):
            c[rows] -= np.outer(loading[rows], loading) / total
    spec = _normalise(_double_centre_offdiagonal(c))
    mean, sd = offdiagonal_moments(spec)
    return Decomposition(common, 1.0 - common, mean, sd), spec


def _double_centre_offdiagonal(gram: np.ndarray) -> np.ndarray:
    """The off-diagonal entries less their row and column means (plus the grand mean), in place; the diagonal kept.

    The common direction is estimated from the KDs themselves, so each u_k^⊥ carries −(its own part of the mean)
    and every off-diagonal product a term −(b_k + b_l) with b_k ∝ ‖u_k^⊥‖² / K: additive in k and l, and it
    follows the modules whenever the size of the KD-specific part does. Double-centring the off-diagonal removes any
    such additive term exactly and leaves block (cluster) structure; the diagonal keeps each KD's own energy.
    """
    n = len(gram)
    if n < 3:
        return gram
    diagonal = np.diag(gram).copy()
    np.fill_diagonal(gram, 0.0)
    rows_mean = gram.sum(axis=1) / (n - 1)
    grand = rows_mean.sum() / n
    # least-squares additive fit a + b_k + b_l to the off-diagonal: b_k = (n−1)/(n−2)·(row_k − grand)
    b = (n - 1) / (n - 2) * (rows_mean - grand)
    for rows in _row_blocks(n, n):
        block = gram[rows]
        block -= b[rows, None]
        block -= b[None, :]
        block -= grand
    np.fill_diagonal(gram, diagonal)
    return gram


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
    sum (`centred_sum_and_variance` per cluster, summed, against N(0, 1)); `core_evidence` does not use it, because
    it rejected 11 % in a null world (benchmarks/normal_reference.py: with few clusters the sum has few terms that
    count, and a skewed one).
    """
    index = np.flatnonzero(labels > 0)
    lab = labels[index]
    n = len(lab)
    groups = [np.flatnonzero(lab == c) for c in np.unique(lab)]
    sums, own = np.zeros((5, n)), np.zeros(n)  # row sums over each KD's same-cluster partners; their number
    for g in groups:
        sums[:, g] = _pair_sums(_reader(a, index[g]), _reader(b, index[g]), len(g))
        own[g] = len(g) - 1
    if own.sum() < 6:
        return StudentizedTest(float("nan"), float("nan"), float("nan"), n_permutations if reference == "permutation"
                               else 0, reference)
    rx, rxx, ry, ryy, rxy = sums

    def r_and_loo(rxy, ry, ryy):
        n_pairs = own.sum() / 2
        totals = [v.sum(axis=-1, keepdims=True) / 2 for v in (rx, ry, rxx, ryy, rxy)]
        r = _pearson_from_sums(n_pairs, *(t[..., 0] for t in totals))
        loo = _pearson_from_sums(n_pairs - own, *(t - row for t, row in zip(totals, (rx, ry, rxx, ryy, rxy))))
        return r, loo

    r, loo = r_and_loo(rxy[None], ry[None], ryy[None])
    r, se = float(r[0]), float(jackknife_se(loo)[0])
    if reference == "normal":
        parts = np.array([centred_sum_and_variance(_reader(a, index[g]), _reader(b, index[g]), len(g), tuple(sums[:, g]))
                          for g in groups])
        total, variance = parts.sum(axis=0)
        return StudentizedTest(r, se, _normal_p(total / np.sqrt(variance) if variance > 0 else float("nan")), 0,
                               "normal")
    # The cluster blocks of a and b (Σ_c K_c² entries each, at most one K × K): a within-cluster permutation moves
    # entries inside them only.
    blocks = [(_reader(a, index[g])(slice(0, len(g))), _reader(b, index[g])(slice(0, len(g)))) for g in groups]
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    permuted_rxy = np.empty(n)
    for t in range(n_permutations):
        perm = np.arange(n)
        for g, (block_a, block_b) in zip(groups, blocks):
            perm[g] = rng.permutation(g)
            local = np.searchsorted(g, perm[g])
            permuted_rxy[g] = (block_a * block_b[np.ix_(local, local)]).sum(axis=1)
        r_p, loo_p = r_and_loo(permuted_rxy[None], ry[perm][None], ryy[perm][None])
        with np.errstate(invalid="ignore", divide="ignore"):
            null[t] = r_p[0] / jackknife_se(loo_p)[0]
    observed = r / se if se > 0 else float("nan")
    return StudentizedTest(r, se, _p_greater(observed, null), n_permutations)


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
        for rows in _row_blocks(len(labels), len(labels)):
            total += onehot[rows].T @ (np.asarray(matrix[rows], dtype=np.float64) @ onehot)
        return total / np.outer(sizes, sizes)

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
                     seed: int, reference: str = "permutation") -> tuple[DepthRouting, ...]:
    """Where in depth routing takes the output clusters' structure: for each backbone block's Jacobians (`blocks`,
    in depth order, [D, H] per KD), C_jac^(ℓ) from their streamed Gram, split into common and KD-specific parts as
    the output's (`decompose`, over every KD), and the deciding Mantel and contrast on the KD-specific part over the
    strong-effect KDs (`strong_effect_kds`; `reference`: as the output's, `reference_for`).

    One Gram [K, K] alive at a time. A block whose Jacobians are the same for every KD (e.g. an identity block on
    the residual stream: ∂h/∂p = I) has common share 1 and an empty KD-specific part: its r and p are NaN.
    """
    found = []
    strong = strong_effect_kds(labels)
    out = on_kds(c_out, strong)
    n_referred = referred_permutations(reference, n_permutations)
    for depth, block in enumerate(blocks, start=1):
        gram = stream_gram(block)
        decomposition, specific = decompose(gram)
        with np.errstate(invalid="ignore", divide="ignore"):
            found.append(DepthRouting(depth, decomposition,
                                      mantel(out, on_kds(specific, strong), n_referred, seed, reference=reference),
                                      cluster_contrast(specific, labels, n_referred, seed, reference=reference),
                                      pearson(out, on_kds(cosine_from_gram(gram), strong))))
    return tuple(found)


def _zscore(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean()
    sd = np.sqrt((centred**2).mean())
    return centred / sd if sd > 0 else centred


# ---------------------------------------------------------------- linearity
def linearity(delta_y: np.ndarray, linear_prediction: np.ndarray) -> pd.Series:
    """Per KD, the share of ΔY_k explained by J_k·(p_k − p_ctrl): 1 − ‖ΔY − J·Δp‖² / ‖ΔY‖²."""
    residual = ((delta_y - linear_prediction) ** 2).sum(axis=1)
    return pd.Series(1 - residual / np.maximum((delta_y**2).sum(axis=1), 1e-300))


# ---------------------------------------------------------------- the evidence the verdict reads


def spread(c_out: np.ndarray, c_jac: np.ndarray) -> Spread:
    (jac_mean, jac_sd), (out_mean, out_sd) = offdiagonal_moments(c_jac), offdiagonal_moments(c_out)
    return Spread(jac_sd, jac_mean, out_sd, out_mean)


def strong_effect_kds(labels: np.ndarray) -> np.ndarray:
    """Indices of the KDs with a strong effect (clusters ≥ 1; group 0 is `clustering`'s "weak or no effect").

    Every statistic that reads C_out reads these KDs only, as the cluster contrast always has: a weak KD's ΔY has no
    direction worth clustering, so its C_out entries are noise, and a Mantel over them asks whether routing follows
    noise. It matters at genome scale: in `datasets.screen`'s 10,000-KD world the weak tail (41 % of the KDs) routes
    every KD through the same units while its small outputs point anywhere, and r over all KDs was 0.10–0.15 against
    0.89 over the strong ones (the call: inconclusive or mixed on planted cluster circuits).
    """
    return np.flatnonzero(labels > 0)


def on_kds(matrix: np.ndarray, index: np.ndarray) -> np.ndarray:
    """`matrix` [K, K] restricted to the KDs `index` [K'] (itself when that is every KD: no copy)."""
    return matrix if len(index) == len(matrix) else matrix[np.ix_(index, index)]


def core_evidence(c_out: np.ndarray, c_jac: np.ndarray, labels: np.ndarray, n_permutations: int, n_bootstrap: int,
                  seed: int, gram: np.ndarray | None = None,
                  normal_reference_kds: int = NORMAL_REFERENCE_KDS) -> RoutingEvidence:
    """The statistics the call rests on (what the calibration replicates compute).

    Routing is first split into its common and KD-specific parts over every KD (`decompose`, from `gram`, the
    Jacobians' Gram; None: `c_jac` is taken as the Gram of unit-norm Jacobians); the deciding Mantel, contrast and the
    within-cluster Mantel are computed on the KD-specific matrix C_jac^spec, the raw C_jac's Mantel and contrast beside
    them, all over the KDs with a strong effect (`strong_effect_kds`). The studentized tests permute KD labels below
    `normal_reference_kds` strong KDs and use the normal reference from there on (`reference_for`; a p near α
    decided by `referred_permutations` permutations), except the
    within-cluster Mantel, which permutes within cluster blocks at every K (its normal reference failed the agreement
    study; see `within_cluster_mantel`). Memory: the inputs, C_jac^spec, the three restricted to the strong KDs when
    some are weak, and for the Spearman Mantel two rank matrices while it runs (K × K float64 each: 800 MB at
    K = 10,000), plus row blocks of `BLOCK_BYTES` and the rank-sum's pair vectors.
    """
    return _evidence(c_out, c_jac, None, labels, n_permutations, n_bootstrap, seed, gram, normal_reference_kds)


def routing_evidence(c_out: np.ndarray, c_jac: np.ndarray, c_rep: np.ndarray, labels: np.ndarray, n_permutations: int,
                     n_bootstrap: int, seed: int, gram: np.ndarray | None = None,
                     normal_reference_kds: int = NORMAL_REFERENCE_KDS) -> RoutingEvidence:
    """`core_evidence` plus the descriptive statistics that involve the encoder geometry C_rep (over the same
    strong-effect KDs; C_rep restricted in place of C_jac^spec once that is done with)."""
    return _evidence(c_out, c_jac, c_rep, labels, n_permutations, n_bootstrap, seed, gram, normal_reference_kds)


def _evidence(c_out: np.ndarray, c_jac: np.ndarray, c_rep: np.ndarray | None, labels: np.ndarray, n_permutations: int,
              n_bootstrap: int, seed: int, gram: np.ndarray | None, normal_reference_kds: int) -> RoutingEvidence:
    """`core_evidence`, and with `c_rep` (not None) `routing_evidence`'s statistics of the encoder geometry."""
    decomposition, c_spec = decompose(c_jac if gram is None else gram)
    n_kds, strong = len(labels), strong_effect_kds(labels)
    n_strong = len(strong)
    out, spec, jac = on_kds(c_out, strong), on_kds(c_spec, strong), on_kds(c_jac, strong)
    reference = reference_for(n_strong, normal_reference_kds)
    n_referred = referred_permutations(reference, n_permutations)
    evidence = RoutingEvidence(
        n_kds=int(n_kds), n_strong=int(n_strong), n_pairs=int(n_strong * (n_strong - 1) // 2),
        mantel_pearson=mantel(out, spec, n_referred, seed, "pearson", reference),
        mantel_spearman=mantel(out, spec, n_referred, seed, "spearman", reference),
        pearson_ci=kd_bootstrap_ci(out, spec, n_bootstrap, seed) if n_bootstrap else (float("nan"),) * 2,
        contrast=cluster_contrast(c_spec, labels, n_referred, seed, reference),
        spread=spread(c_out, c_jac),
        decomposition=decomposition,
        within_mantel=within_cluster_mantel(c_out, c_spec, labels, n_permutations, seed),
        raw_mantel=mantel(out, jac, n_referred, seed, "pearson", reference),
        raw_contrast=cluster_contrast(c_jac, labels, n_referred, seed, reference),
        cluster_level=cluster_level(c_out, c_spec, labels, n_permutations, seed),
        borderline=None if reference == "permutation" else BORDERLINE,
        borderline_permutations=0 if reference == "permutation" else n_referred)
    if c_rep is None:
        return evidence
    del spec, c_spec  # C_jac^spec is done with; C_rep's restriction takes its place
    rep = on_kds(c_rep, strong)
    read_out, read_rep = _reader(out), _reader(rep)
    return replace(evidence, partial_mantel=partial_mantel(jac, out, rep, n_referred, seed, reference),
                   mantel_out_rep=mantel(out, rep, n_referred, seed, "pearson", reference),
                   keyed_lookup_r=_pearson(_reader(jac), lambda rows: read_out(rows) * read_rep(rows), n_strong))

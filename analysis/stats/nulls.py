"""The null references of the studentized routing tests, and the one dispatcher between them (`refer`).

Pairs share KDs, so pair-level p-values are not valid: inference permutes KD labels (`permutations`, `p_greater`).
At genome scale (K ≈ 10,000: 5·10⁷ pairs, 800 MB per float64 K × K matrix) every permutation costs O(K²), so from
`normal_reference_kds` KDs on the studentized tests refer their statistic to N(0, 1) instead
(`centred_sum_and_variance`, chosen by the agreement study in benchmarks/normal_reference.py), and permute only where
that p is near α (`BORDERLINE`). Every test gets its p, its permutation count and its reference label from `refer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from scipy.stats import norm

from ..config import AnalysisConfig
from .pairs import Reader, pair_sums, row_blocks, zero_diagonal

NORMAL_REFERENCE_KDS = AnalysisConfig.normal_reference_kds  # the config's default switch (`reference_for`)


# ---------------------------------------------------------------- the permutation reference
def permutations(n_kds: int, n_permutations: int, seed: int, batch: int) -> Iterator[np.ndarray]:
    """Seeded KD-label permutations [b, K] in batches of at most `batch`."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_permutations, batch):
        yield np.argsort(rng.random((min(batch, n_permutations - start), n_kds)), axis=1)


PERMUTATION_BATCH = 64  # permutations drawn at a time (the draws do not depend on it)


def p_greater(observed: float, null: np.ndarray) -> float:
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

    `sums`: `pair_sums(x, y, n)` when already computed. Two blocked passes (one with `sums`). (0, 0) for n < 3: a
    single pair is its own mean.
    """
    if n < 3:
        return 0.0, 0.0
    rx, _, ry, _, rxy = pair_sums(x, y, n) if sums is None else sums
    mean_x, mean_y = rx.sum() / (n * (n - 1)), ry.sum() / (n * (n - 1))
    alpha, beta = (rx - (n - 1) * mean_x) / (n - 2), (ry - (n - 1) * mean_y) / (n - 2)
    total = float((rxy - mean_y * rx - mean_x * ry + (n - 1) * mean_x * mean_y).sum() / 2)
    pairs = shared = noise = 0.0
    for rows in row_blocks(n, n):
        rest_x = x(rows) - mean_x - alpha[rows, None] - alpha[None, :]
        rest_y2 = zero_diagonal((y(rows) - mean_y - beta[rows, None] - beta[None, :]) ** 2, rows)
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


# ---------------------------------------------------------------- near α: the two references together
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
    under "normal" at most BORDERLINE_PERMUTATIONS, spent only on a borderline p (`refer`)."""
    return n_permutations if reference == "permutation" else min(n_permutations, BORDERLINE_PERMUTATIONS)


def near_alpha(p: float) -> bool:
    """Whether a normal p lies in BORDERLINE, where the permutation p decides instead."""
    return BORDERLINE[0] <= p <= BORDERLINE[1]


def borderline_rule(reference: str, n_permutations: int) -> tuple[tuple[float, float] | None, int]:
    """What a record says of the near-α rule under `reference` (`RoutingEvidence.borderline`,
    `.borderline_permutations`): (BORDERLINE, the permutations a borderline p gets) under "normal"; (None, 0) under
    "permutation", which permutes every p."""
    if reference == "permutation":
        return None, 0
    return BORDERLINE, referred_permutations(reference, n_permutations)


def refer(reference: str, n_permutations: int, z: Callable[[], float],
          permuted: Callable[[], float]) -> tuple[float, int, str]:
    """(p, permutations run, reference label) of a studentized test: what `StudentizedTest` records after its statistic
    and SE, the one place the references part ways.

    reference "normal": Φ̄(z()) (z: the test's `normal_z`), "normal"; or, where that p is `near_alpha` and
    `n_permutations` > 0, `permuted()`, "normal+permutation". Otherwise (reference "permutation") `permuted()`,
    "permutation". permuted(): the one-sided permutation p of the studentized statistic from `n_permutations`
    permutations (the test's own scheme and seed, so a borderline p is the permutation reference's p). Only the
    reference's own callables run: z() never under "permutation", permuted() under "normal" only near α.
    """
    if reference == "normal":
        p = _normal_p(z())
        if n_permutations and near_alpha(p):
            return permuted(), n_permutations, "normal+permutation"
        return p, 0, "normal"
    return permuted(), n_permutations, "permutation"

"""Is the encoder geometry used? Interventions on pert_repr, scored from the responses the model gave to them (the
model side computes those: `model.interventions`; here only numbers).

Correlations between similarity matrices can only say that two geometries agree: a per-KD lookup whose gate reads
each KD's own embedding gives C_jac = C_out ⊙ C_rep and passes every routing criterion. The model is in our hands,
so the question is asked of it directly (the interchange interventions of causal abstraction, as pyvene's
`IntervenableModel` or activation patching do for language models).

**Centroid substitution** (decides, with the distance control). For KD k of an output cluster with n ≥
`MIN_CLUSTER` KDs, c₋ₖ is the mean pert_repr of the cluster's *other* n − 1 KDs (leave-one-out, so k's own
KD-specific part is not in it): it keeps what the cluster's embeddings share and averages away what is KD-specific.
If the shared part carries the response, the model's ΔY(c₋ₖ) reproduces ΔY_k; if the response is read from
KD-specific components (a lookup, Model A), it collapses. Direction and size are scored apart (a KD far from its
cluster's mean strength gets the size wrong and the direction right): cos(ΔY(c₋ₖ), ΔY_k) (0 when the model gives no
response at all), the size ratio ‖ΔY(c₋ₖ)‖/‖ΔY_k‖, and both together as the share reproduced,
1 − ‖ΔY(c₋ₖ) − ΔY_k‖²/‖ΔY_k‖², summarised by its *median* over KDs (its mean is dominated by the few KDs whose size
is far off: one response twice ΔY_k's size scores −1 however well it points).

*Random groups.* The reference is the same substitution by the centroids of the groups a permutation of the
substituted KDs' cluster labels gives: `random_groups` joint permutations, and for each KD in each permutation the
other KDs that share its permuted label (group sizes are those of the clusters, as a multiset). The gain
d_k = cos(ΔY(c₋ₖ), ΔY_k) − mean over permutations of cos(ΔY(random centroid), ΔY_k) says how much better the
cluster's shared part reproduces the response than an arbitrary group's average does (a response common to all
KDs, which any centroid reproduces, is not cluster geometry).

*Inference without a floor of clusters.* The KDs of one cluster share centroid members, so their d's are
dependent, and a sign flip over clusters has the floor 2^−C (with 2 clusters it can never reach α = 0.05). The
permutations are the finer unit: the statistic T = mean_k cos(ΔY(centroid of k's group), ΔY_k) is computed for the
clusters' labels and for each permutation of them, from the same forward passes, and p = (1 + #{T_perm ≥ T})/(1 + R)
is exact under the null that a cluster's centroid is to the model like any group's (labels exchangeable), whatever
the dependence between KDs and however few the clusters; its floor is 1/(R + 1) (R = `random_groups`). The bounds
are percentile intervals of a cluster bootstrap (clusters resampled, the KD-level mean recomputed; one-sided 95 %
each), so they stay inside the range the per-KD values span: the gain cannot exceed 1 − the random cosine, and its
bound does not either. With C = 2 the bootstrap has three outcomes, and the upper bound is the larger cluster mean.

**Distance control** (decides with the gain). The random groups' centroids lie far from p_k, so the gain alone
cannot say whether c₋ₖ reproduces ΔY_k because it is the cluster's shared part or merely because it is near p_k.
The distance ratio ρ_k = ‖c₋ₖ − p_k‖ / ‖p_k − p_ctrl‖ is reported per KD, and the centroid's move is compared with
`matched_moves` random moves of the same size from the same point (directions uniform in the span of the KDs'
offsets p − p_ctrl, the encoder's range, seeded per KD). Where the members sit so close to their centroid that no
move of that size could matter (ρ_k < `probe_ratio`), the KD-specific part is first amplified: the probe point is
p̃_k = c₋ₖ + λ_k (p_k − c₋ₖ) with λ_k = probe_ratio / ρ_k (λ_k = 1, p̃_k = p_k, otherwise), so that the
comparison is read at a distance of at least probe_ratio × the KD's offset. The excess cost
e_k = mean over moves of cos(ΔY(p̃_k + λ_k (c₋ₖ − p_k)_random), ΔY(p̃_k)) − cos(ΔY(c₋ₖ), ΔY(p̃_k)) — how much more
reproduction dropping the KD-specific part loses than a random move of the same size — is near 0 when the
KD-specific part is not what the model reads (measured on the planted models: module routing 0.04, a linear
readout 0.00, a widely gated lookup 0.00) and near 1 for a lookup keyed on it (1.00). It is scored against the
model's own ΔY(p̃_k), from the same forward as the moves (ΔY(p_k) when λ_k = 1), and its bounds are the same
cluster bootstrap's.

*How the two enter the answer* (`stats.verdict.use_answer`): the gain says whether the cluster's shared part
carries the response better than an arbitrary group's; the excess says whether the KD-specific part carries more
of it than any move of its size would lose. "used" needs both: the gain shown (p < α, ≥ margin) and the excess
ruled out (upper bound < margin). A gain ruled out (upper bound < margin) is "not used" whatever the excess (a
lookup: no centroid, cluster or random, reproduces anything; or a response every centroid reproduces). A gain
shown with the excess shown (lower bound > 0, ≥ margin) is "partly used": the shared part carries part of each
response and the model reads the KD-specific part beyond it (the planted "partial-use" world, module units writing
a quarter of the response: excess 0.34). The rest is "inconclusive". One margin (`substitution_margin`, cosine)
for both rows.

Clusters of one or two KDs are not substituted: with one there is no centroid; with two the leave-one-out centroid
is the other KD's own embedding, so substitution would only repeat that the two respond alike. The weak-effect
group 0 is not an output cluster and is not substituted.

**Interchange** (reported). Π projects onto the span of the substituted clusters' centroids (of p − p_ctrl). For KD
k of cluster a and a seeded other cluster b, the cluster-shared component is swapped and the KD-specific rest kept:
p' = p_ctrl + (I − Π)(p_k − p_ctrl) + Π(c̄_b − p_ctrl). The intervention succeeds when ΔY(p') is closer (cosine) to
cluster b's mean response than to cluster a's (interchange accuracy). Its null makes the same swap along a random
subspace of the same rank (Π_rand, seeded): a model that moves towards b with any change of p passes that too. The
paired per-KD difference of successes is tested with a one-sided sign flip over clusters (reported only, with its
floor 2^−C) and bounded by the cluster bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..results import ClusterInference, DistanceControl, InterchangeTest, SubstitutionTest
from .consistency import cluster_bootstrap_interval, sign_flip_p

MIN_CLUSTER = 3  # KDs a cluster needs to be substituted (see the module docstring)
BOUND_CONFIDENCE = 0.90  # two-sided percentile interval whose ends are the one-sided 95 % bounds


@dataclass(frozen=True)
class SubstitutionPlan:
    """Which pert_repr centroids the model is asked about.

    kds [n]: indices (into the run's KDs) of the substituted KDs; clusters [n]: their output clusters; groups: for
    each substituted KD, 1 + random_groups member-index arrays — its cluster's other KDs first, then its group
    under each of the random_groups joint label permutations. Points, in `centroids`' order: KD by KD, its
    leave-one-out centroid, then its random groups' centroids.
    """

    kds: np.ndarray
    clusters: np.ndarray
    groups: tuple
    random_groups: int

    @property
    def n_points(self) -> int:
        return len(self.kds) * (1 + self.random_groups)


def substitution_plan(labels: np.ndarray, random_groups: int, seed: int) -> SubstitutionPlan:
    """The substitution design for output clusters `labels` [K] (0: weak-effect group, not substituted)."""
    labels = np.asarray(labels)
    names, sizes = np.unique(labels, return_counts=True)
    eligible = [c for c, n in zip(names, sizes) if c != 0 and n >= MIN_CLUSTER]
    kds = np.flatnonzero(np.isin(labels, eligible))
    rng = np.random.default_rng([seed, 17])
    own = labels[kds]
    permuted = [rng.permutation(own) for _ in range(random_groups)]  # [R][n]: joint label permutations
    index = np.arange(len(kds))
    groups = tuple((kds[(own == own[i]) & (index != i)],)
                   + tuple(kds[(perm == perm[i]) & (index != i)] for perm in permuted) for i in index)
    return SubstitutionPlan(kds, own, groups, random_groups)


def centroids(pert_repr: np.ndarray, plan: SubstitutionPlan) -> np.ndarray:
    """The substituted pert_repr [n_points, H] in the plan's order."""
    points = [pert_repr[group].mean(axis=0) for kd_groups in plan.groups for group in kd_groups]
    return np.stack(points) if points else np.zeros((0, pert_repr.shape[1]))


@dataclass(frozen=True)
class DistancePlan:
    """The distance control's points for the substitution plan's n KDs (module docstring).

    ratio [n]: ρ_k = ‖c₋ₖ − p_k‖ / ‖p_k − p_ctrl‖; amplification [n]: λ_k ≥ 1; probe_ratio, matched_moves: the
    settings; points [n·(1 + matched_moves), H]: KD by KD, the probe point p̃_k, then its matched random moves
    p̃_k + λ_k‖c₋ₖ − p_k‖·v (v unit, uniform in the span of the KDs' offsets).
    """

    ratio: np.ndarray
    amplification: np.ndarray
    probe_ratio: float
    matched_moves: int
    points: np.ndarray


def distance_plan(pert_repr: np.ndarray, control_repr: np.ndarray, plan: SubstitutionPlan, probe_ratio: float,
                  matched_moves: int, seed: int) -> DistancePlan:
    """Probe points and same-size random moves for pert_repr [K, H] around control_repr [H] (module docstring)."""
    offsets = pert_repr - control_repr
    _, s, vt = np.linalg.svd(offsets, full_matrices=False)
    span = vt[s > s.max() * 1e-8] if s.size and s.max() > 0 else vt[:0]  # [r, H] orthonormal rows
    rng = np.random.default_rng([seed, 29])
    n, width = len(plan.kds), pert_repr.shape[1]
    ratio, amplification = np.zeros(n), np.ones(n)
    points = np.zeros((n * (1 + matched_moves), width))
    for i, (k, group) in enumerate(zip(plan.kds, plan.groups)):
        move = pert_repr[group[0]].mean(axis=0) - pert_repr[k]  # c₋ₖ − p_k [H]
        distance, offset = np.linalg.norm(move), np.linalg.norm(offsets[k])
        ratio[i] = distance / offset if offset > 0 else np.inf
        amplification[i] = probe_ratio / ratio[i] if 0 < ratio[i] < probe_ratio else 1.0
        probe = pert_repr[k] - (amplification[i] - 1.0) * move  # c₋ₖ + λ(p_k − c₋ₖ)
        directions = rng.normal(size=(matched_moves, len(span))) @ span if len(span) else np.zeros((matched_moves, width))
        norms = np.linalg.norm(directions, axis=1, keepdims=True)
        directions = np.where(norms > 0, directions / np.maximum(norms, 1e-300), 0.0)
        block = slice(i * (1 + matched_moves), (i + 1) * (1 + matched_moves))
        points[block] = np.vstack([probe[None], probe + amplification[i] * distance * directions])
    return DistancePlan(ratio, amplification, probe_ratio, matched_moves, points)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cos(a_i, b_i) [n]; 0 where either row is zero (no response reproduces nothing)."""
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(norms > 0, (a * b).sum(axis=-1) / np.maximum(norms, 1e-300), 0.0)


def _share(response: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1 − ‖response − target‖² / ‖target‖², row-wise (1: reproduced; 0: nothing; below 0: worse than nothing)."""
    return 1.0 - ((response - target) ** 2).sum(axis=-1) / np.maximum((target**2).sum(axis=-1), 1e-300)


def cluster_bounds(values: np.ndarray, clusters: np.ndarray, n_bootstrap: int, seed: int) -> tuple[float, float]:
    """One-sided 95 % lower and upper bounds of the mean of `values` [n] over KDs: percentile interval of a cluster
    bootstrap (clusters [n] resampled; each end lies within the range of the cluster means)."""
    names, index = np.unique(clusters, return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(names))
    sizes = np.bincount(index, minlength=len(names)).astype(np.float64)
    return cluster_bootstrap_interval(sums, sizes, n_bootstrap, seed, BOUND_CONFIDENCE)


def cluster_inference(values: np.ndarray, clusters: np.ndarray, n_permutations: int, n_bootstrap: int,
                      seed: int) -> ClusterInference:
    """Mean of `values` [n] over KDs with clusters [n] as the units: one-sided (values > 0) sign-flip p of the cluster
    sums (floor 2^−C when exact) and the cluster bootstrap's bounds."""
    names, index = np.unique(clusters, return_inverse=True)
    estimate = float(values.mean())
    if len(names) < 2:
        return ClusterInference(estimate, float("nan"), float("nan"), float("nan"), 0, True, len(names),
                                "cluster sign flip", n_bootstrap)
    sums = np.bincount(index, weights=values, minlength=len(names))
    p, n_null, exact = sign_flip_p(sums, n_permutations, seed, one_sided=True)
    lower, bound = cluster_bounds(values, clusters, n_bootstrap, seed)
    return ClusterInference(estimate, lower, bound, p, n_null, exact, len(names), "cluster sign flip", n_bootstrap)


def permutation_p(own: np.ndarray, permuted: np.ndarray) -> float:
    """One-sided p of T = mean(own) [n] against T under each permutation, mean over KDs of permuted [n, R]:
    (1 + #{T_perm ≥ T})/(1 + R), ties within rounding counted as extreme."""
    observed, null = own.mean(), permuted.mean(axis=0)
    tolerance = 1e-12 * max(np.abs(own).sum(), 1e-300)
    return float((1 + np.sum(null >= observed - tolerance)) / (1 + permuted.shape[1]))


def substitution_test(delta_y: np.ndarray, responses: np.ndarray, probe_responses: np.ndarray,
                      plan: SubstitutionPlan, distance: DistancePlan, kd_names, n_bootstrap: int,
                      seed: int) -> tuple[SubstitutionTest, pd.DataFrame]:
    """Score the model's responses [n_points, G] to the plan's centroids against ΔY [K, G], and its responses
    [n·(1 + matched_moves), G] to the distance plan's points against ΔY at the probe points.

    Returns the test and the per-KD table (kd, cluster, cosine, share, size_ratio, random_cosine, random_share, gain,
    distance_ratio, amplification, probe_cosine, matched_cosine, excess_cost).
    """
    n, groups = len(plan.kds), plan.random_groups
    if n == 0 or len(np.unique(plan.clusters)) < 2:
        nan = float("nan")
        undecided = ClusterInference(nan, nan, nan, nan, 0, True, 0, "label permutation", n_bootstrap)
        control = _distance_control(distance, np.zeros(0), np.zeros(0), plan.clusters, n_bootstrap, seed)
        return SubstitutionTest(n, groups, *([nan] * 6), undecided, control), _table(kd_names, plan)
    target = delta_y[plan.kds]  # [n, G]
    answers = responses.reshape(n, 1 + groups, -1)
    own, random = answers[:, 0], answers[:, 1:]
    cosine, share = _cosines(own, target), _share(own, target)  # [n]
    random_cosines = _cosines(random, target[:, None])  # [n, R]
    random_cosine, random_share = random_cosines.mean(axis=1), _share(random, target[:, None]).mean(axis=1)
    size = np.linalg.norm(own, axis=-1) / np.maximum(np.linalg.norm(target, axis=-1), 1e-300)
    gain = cosine - random_cosine
    lower, bound = cluster_bounds(gain, plan.clusters, n_bootstrap, seed)
    inference = ClusterInference(float(gain.mean()), lower, bound, permutation_p(cosine, random_cosines), groups,
                                 False, len(np.unique(plan.clusters)), "label permutation", n_bootstrap)
    probes = probe_responses.reshape(n, 1 + distance.matched_moves, -1)
    probe_cosine = _cosines(own, probes[:, 0])
    matched_cosine = _cosines(probes[:, 1:], probes[:, :1]).mean(axis=1)
    control = _distance_control(distance, probe_cosine, matched_cosine, plan.clusters, n_bootstrap, seed)
    table = _table(kd_names, plan, cosine=cosine, share=share, size_ratio=size, random_cosine=random_cosine,
                   random_share=random_share, gain=gain, distance_ratio=distance.ratio,
                   amplification=distance.amplification, probe_cosine=probe_cosine, matched_cosine=matched_cosine,
                   excess_cost=matched_cosine - probe_cosine)
    test = SubstitutionTest(n, groups, float(cosine.mean()), float(random_cosine.mean()), float(np.median(share)),
                            float(np.median(random_share)), float(np.median(size)),
                            float((np.linalg.norm(own, axis=-1) == 0).mean()), inference, control)
    return test, table


def _distance_control(distance: DistancePlan, probe_cosine: np.ndarray, matched_cosine: np.ndarray,
                      clusters: np.ndarray, n_bootstrap: int, seed: int) -> DistanceControl:
    """The distance control's record from per-KD cosines [n] (empty: not measured, NaN numbers)."""
    nan = float("nan")
    ratio = distance.ratio[np.isfinite(distance.ratio)]
    quantiles = np.quantile(ratio, [0.1, 0.5, 0.9]) if ratio.size else np.full(3, nan)
    amplified = ((float((distance.amplification > 1).mean()), float(np.median(distance.amplification)))
                 if distance.amplification.size else (nan, nan))
    if probe_cosine.size == 0:
        excess = ClusterInference(nan, nan, nan, nan, 0, True, 0, "none", n_bootstrap)
        return DistanceControl(distance.probe_ratio, distance.matched_moves, *quantiles, *amplified, nan, nan, excess)
    values = matched_cosine - probe_cosine
    lower, bound = cluster_bounds(values, clusters, n_bootstrap, seed)
    excess = ClusterInference(float(values.mean()), lower, bound, nan, 0, True, len(np.unique(clusters)), "none",
                              n_bootstrap)
    return DistanceControl(distance.probe_ratio, distance.matched_moves, *quantiles, *amplified,
                           float(probe_cosine.mean()), float(matched_cosine.mean()), excess)


def _table(kd_names, plan: SubstitutionPlan, **columns) -> pd.DataFrame:
    names = np.asarray(kd_names, dtype=object)[plan.kds] if len(plan.kds) else np.array([], dtype=object)
    return pd.DataFrame({"kd": names, "cluster": plan.clusters, **columns})


# ---------------------------------------------------------------- interchange
@dataclass(frozen=True)
class InterchangePlan:
    """Swapped pert_repr for the substituted KDs: kds [n], source clusters [n], target clusters [n]; rank: the
    dimension of the swapped span; points [2n, H]: the swap along the centroids' span for every KD, then along a
    random subspace of the same rank (the null)."""

    kds: np.ndarray
    clusters: np.ndarray
    targets: np.ndarray
    rank: int
    points: np.ndarray


def _projector(basis: np.ndarray) -> tuple[np.ndarray, int]:
    """Orthogonal projector [H, H] onto the row span of `basis` [r, H], and its rank."""
    u, s, vt = np.linalg.svd(basis, full_matrices=False)
    rank = int((s > s.max() * 1e-8).sum()) if s.size and s.max() > 0 else 0
    return vt[:rank].T @ vt[:rank], rank


def interchange_plan(pert_repr: np.ndarray, control_repr: np.ndarray, plan: SubstitutionPlan,
                     seed: int) -> InterchangePlan | None:
    """The interchange design over the substitution plan's KDs (None with fewer than 2 clusters)."""
    names = np.unique(plan.clusters)
    if len(names) < 2:
        return None
    rng = np.random.default_rng([seed, 23])
    offsets = pert_repr - control_repr  # [K, H]
    means = np.stack([offsets[plan.kds[plan.clusters == c]].mean(axis=0) for c in names])  # [C, H]
    shared, rank = _projector(means)
    random_basis = rng.normal(size=(rank, pert_repr.shape[1]))
    random_projector, _ = _projector(random_basis)
    targets = np.array([rng.choice(names[names != c]) for c in plan.clusters])
    target_means = means[np.searchsorted(names, targets)]
    points = []
    for projector in (shared, random_projector):
        own = offsets[plan.kds]
        points.append(control_repr + own - own @ projector + target_means @ projector)
    return InterchangePlan(plan.kds, plan.clusters, targets, rank, np.concatenate(points))


def interchange_test(delta_y: np.ndarray, responses: np.ndarray, plan: InterchangePlan, n_permutations: int,
                     n_bootstrap: int, seed: int) -> tuple[InterchangeTest, pd.DataFrame]:
    """Score the responses [2n, G] to the interchange plan: success when ΔY(p') is closer to the target cluster's
    mean response than to the source cluster's. Returns the test and the per-KD table (kd index, target,
    interchange_success, interchange_null_success)."""
    n = len(plan.kds)
    names = np.unique(plan.clusters)
    cluster_means = np.stack([delta_y[plan.kds[plan.clusters == c]].mean(axis=0) for c in names])
    source = cluster_means[np.searchsorted(names, plan.clusters)]
    target = cluster_means[np.searchsorted(names, plan.targets)]
    success = [(_cosines(r, target) > _cosines(r, source)).astype(float) for r in (responses[:n], responses[n:])]
    inference = cluster_inference(success[0] - success[1], plan.clusters, n_permutations, n_bootstrap, seed)
    test = InterchangeTest(n, plan.rank, float(success[0].mean()), float(success[1].mean()), inference)
    return test, pd.DataFrame({"target": plan.targets, "interchange_success": success[0].astype(bool),
                               "interchange_null_success": success[1].astype(bool)})


# ---------------------------------------------------------------- steering along the routing axes
# In units of the median ‖p_k − p_ctrl‖; small steps first, so a trust radius far below a KD's own offset shows.
STEPS = tuple(sign * size for size in (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0) for sign in (-1.0, 1.0))
TRUST_TOLERANCE = 0.1  # the first-order prediction holds while its relative error stays below this
STEERED_AXES = 3  # leading routing axes steered along


@dataclass(frozen=True)
class SteeringPlan:
    """Steps along the leading routing axes: for axis a, from the representation of KD kds[a] (its highest scorer)
    along directions[a] [H] (the axis's pert_repr factor, unit norm) by steps × scale; points [A·(1 + T), H]: for
    each axis the start, then its T steps."""

    kds: np.ndarray
    directions: np.ndarray
    steps: np.ndarray
    scale: float
    points: np.ndarray


def steering_plan(pert_repr: np.ndarray, control_repr: np.ndarray, kd_scores: np.ndarray,
                  input_directions: np.ndarray, labels: np.ndarray, n_axes: int = STEERED_AXES) -> SteeringPlan:
    """Where to steer from and how far: from the KD of an output cluster (any KD when none is clustered) scoring
    highest on the axis; scale = the median ‖p_k − p_ctrl‖ over KDs, so a step of 1 moves p as far as a typical KD
    lies from the control."""
    n_axes = min(n_axes, len(input_directions))
    clustered = np.asarray(labels) > 0
    scores = np.where(clustered[:, None], kd_scores[:, :n_axes], -np.inf) if clustered.any() else kd_scores[:, :n_axes]
    kds = np.argmax(scores, axis=0)
    scale = float(np.median(np.linalg.norm(pert_repr - control_repr, axis=1)))
    steps = np.asarray(STEPS)
    points = [np.concatenate([pert_repr[k][None], pert_repr[k] + np.outer(steps * scale, input_directions[a])])
              for a, k in enumerate(kds)]
    return SteeringPlan(kds, input_directions[:n_axes], steps, scale,
                        np.concatenate(points) if points else np.zeros((0, pert_repr.shape[1])))


def first_order_columns(shards, plan: SteeringPlan) -> np.ndarray:
    """J_k·v [A, G] for each steered axis (its KD's stored Jacobian times its direction), from the shards."""
    out = np.zeros((len(plan.kds), shards.shape[0]))
    for kd_index, jac in shards:
        for a, k in enumerate(plan.kds):
            hit = np.flatnonzero(kd_index == k)
            if hit.size:
                out[a] = jac[hit[0]].astype(np.float64) @ plan.directions[a]
    return out


def steering_table(responses: np.ndarray, columns: np.ndarray, plan: SteeringPlan, gene_loadings: np.ndarray,
                   kd_names) -> tuple[pd.DataFrame, tuple]:
    """Dose-response along each axis: the change of ΔY from the start, ΔY(p + t·s·v) − ΔY(p), against its first-order
    prediction t·s·J·v. Returns the table (axis, kd, step, distance, relative_error = ‖change − prediction‖ /
    ‖prediction‖, cos_first_order, cos_loading: cosine of the change with the axis's gene loading) and each axis's
    trust radius: the largest |step| up to which every step (both signs) keeps the relative error below
    TRUST_TOLERANCE (0 when the smallest does not). Along an axis that carries almost no routing energy the changes
    at small steps are at the float rounding of the outputs, and so is their relative error (and the radius)."""
    n_steps = len(plan.steps)
    rows, radii = [], []
    for a, k in enumerate(plan.kds):
        block = responses[a * (1 + n_steps):(a + 1) * (1 + n_steps)]
        change = block[1:] - block[0]  # [T, G]
        predicted = np.outer(plan.steps * plan.scale, columns[a])
        error = np.linalg.norm(change - predicted, axis=1) / np.maximum(np.linalg.norm(predicted, axis=1), 1e-300)
        cos_first = _cosines(change, predicted)
        cos_loading = _cosines(change, np.broadcast_to(gene_loadings[a], change.shape))
        for t, e, c, g in zip(plan.steps, error, cos_first, cos_loading):
            rows.append({"axis": a + 1, "kd": kd_names[k], "step": float(t), "distance": float(abs(t) * plan.scale),
                         "relative_error": float(e), "cos_first_order": float(c), "cos_loading": float(g)})
        held = 0.0
        for size in np.unique(np.abs(plan.steps)):
            if np.all(error[np.abs(plan.steps) <= size] < TRUST_TOLERANCE):
                held = float(size)
            else:
                break
        radii.append(held)
    return pd.DataFrame(rows), tuple(radii)

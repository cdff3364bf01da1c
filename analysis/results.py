"""The results container: frozen records of what each stage computed, as the cache stores them and the report reads them.

One container at the base (scanpy's AnnData role): `Results` holds every cell line's `LineResults` (its
`EffectsResult`, `RoutingResult` and provenance) and the `AcrossResult`; the statistics' own records
(`StudentizedTest`, `RoutingEvidence`, `Verdict`, …) live here too, so the statistics, the store and the
presentation share one vocabulary. Nothing here computes, reads files or words a result; every record carries the
parameters it was computed with where a reader needs them (n_permutations, fdr, alpha, …).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Protocol

import numpy as np
import pandas as pd

from .config import AnalysisConfig

CALLS = ("cluster circuits", "graded routing", "per-KD", "global readout", "mixed", "inconclusive", "degenerate",
         "unreliable")  # what a `Verdict` can call
USES = ("used", "partly used", "not used", "inconclusive")  # what the interventions say of the encoder geometry (`Verdict.use`)
Z_ONE_SIDED_95 = 1.6448536269514722  # Φ⁻¹(0.95): one-sided 95 % bounds (equivalence at α = 0.05)


@dataclass(frozen=True)
class Responses:
    """ΔY and the perturbation representations, for the K KDs in `kd_names` order.

    delta_y [K, G] (output units, e.g. log-normalised expression); delta_y_draws [R, K, G];
    pert_repr [K, H] and control_repr [H] (pert_encoder outputs); draw_cells [R, S] control-cell rows.
    """

    kd_names: tuple
    gene_names: tuple
    delta_y: np.ndarray
    delta_y_draws: np.ndarray
    pert_repr: np.ndarray
    control_repr: np.ndarray
    draw_cells: np.ndarray


@dataclass(frozen=True)
class ClusterExistence:
    """Do the outputs cluster at all (`stats.clustering.cluster_existence`)? silhouette: the best mean silhouette of
    the strong KDs' clustering (over 2..max_clusters, as chosen); null_median / null_q95: the same for n_draws draws
    of as many points from a Gaussian with their ΔY's mean and covariance (no clusters, the same spread); p_value:
    one-sided, (1 + #{null ≥ observed}) / (1 + n_draws); n_kds: the KDs it read (a seeded subsample beyond
    `MAX_EXISTENCE_KDS`); stability: the clustering's median bootstrap ARI, reported beside."""

    silhouette: float
    null_median: float
    null_q95: float
    p_value: float
    n_draws: int
    n_kds: int
    stability: float


@dataclass(frozen=True)
class EffectsResult:
    """The effects stage: responses, clusters, enrichment.

    kd_table: kd, cluster, draw_cosine, split_half_r, effect_norm; c_out [K, K]: cosine of ΔY; silhouette: per
    candidate number of clusters; bootstrap_ari [cluster_bootstrap]; order [K]: the dendrogram's leaf order;
    ora / gsea: enrichment tables (query = 'cluster c'); seconds: wall time of the stage; existence: whether the
    outputs cluster beyond a Gaussian with their covariance.
    """

    key: str
    responses: Responses
    kd_table: pd.DataFrame
    c_out: np.ndarray
    silhouette: pd.DataFrame
    bootstrap_ari: np.ndarray
    order: np.ndarray
    ora: pd.DataFrame
    gsea: pd.DataFrame
    seconds: Annotated[float, Measured]
    existence: ClusterExistence | None = None

    @property
    def labels(self) -> np.ndarray:
        return self.kd_table["cluster"].to_numpy()


class Measured:
    """Marks a record field measured while its stage ran (wall time, memory, where it ran), not computed from the
    inputs: the store keeps such fields in the stage's completion record beside its files, so a recomputed stage's
    files are byte-identical to the first run's."""


class JacobianReader(Protocol):
    """The Jacobians of one stage, read lazily from its folder (`store.shards.JacobianShards` is the store's): K =
    n_kds, J_k [G, H] with (G, H) = shape, n_blocks backbone blocks; iterating yields (kd_index [b], J [b, G, H])
    shard by shard (`rows`, `halves`, `block`, `linear_prediction`: see there)."""

    n_kds: int
    shape: tuple
    n_blocks: int


@dataclass(frozen=True)
class JacobiansResult:
    """The Jacobians stage: J_k = ∂E[Y]/∂pert_repr [G, H] per KD, in shards (`store.shards`), and how they were made.

    n_kds: K; n_shards: shard files; seconds: compute time summed over shards; device: where they were computed, e.g.
    "cuda:0 (NVIDIA H100)" or "cpu"; executor: what ran the shards ("local", "ray …"); autograd_check: {"kd",
    "relative_error"}, one stored J_k against reverse mode on this run.
    """

    key: str
    shards: JacobianReader
    n_kds: int
    n_shards: int
    seconds: Annotated[float, Measured]
    device: Annotated[str, Measured]
    executor: Annotated[str, Measured]
    autograd_check: Annotated[dict, Measured]
    path_points: int = 0  # Q: the shards also hold path-averaged Jacobians over Q points (0: none)


@dataclass(frozen=True)
class RoutingResult:
    """The routing stage (Jacobians and their statistics): similarity matrices [K, K], SVD summaries, statistics,
    verdict, prior-work numbers. C_out is the effects stage's (`EffectsResult.c_out`)."""

    key: str
    jacobian_key: str
    c_jac: np.ndarray
    c_rep: np.ndarray
    gram: np.ndarray  # [K, K] Gram of the flattened Jacobians, ⟨J_k, J_l⟩
    variance_explained: np.ndarray  # [A] shares of the KD-specific routing energy (`stats.gram.JacobianSVD`)
    kd_scores: np.ndarray  # [K, A] routing axes: SVD of the KD-specific part of the unit-norm Jacobians
    gene_loadings: np.ndarray  # [A, G]
    output_kd_scores: np.ndarray  # [K, A] SVD of unit-norm ΔY
    output_gene_loadings: np.ndarray  # [A, G]
    evidence: RoutingEvidence
    svd: SvdEvidence
    svd_enrichment: pd.DataFrame
    first_order: pd.DataFrame  # per KD: kd, cluster, explained (first order), split_explained, common_share,
    # specific_share, jacobian_norm (`stats.decomposition.response_shares`)
    verdict: Verdict
    prior_work: dict  # numbers behind the original plan's prior-work rows (`stats.prior_work`)
    seconds: Annotated[dict, Measured]  # wall time of each stage of the line: effects, jacobians, routing
    autograd_check: Annotated[dict, Measured]  # the Jacobians stage's (`JacobiansResult.autograd_check`)
    jacobian_device: Annotated[str, Measured]  # where the Jacobians were computed, e.g. "cuda:0 (NVIDIA H100)" or "cpu"
    c_jac_specific: np.ndarray  # [K, K] C_jac^spec, the KD-specific routing the criteria read
    input_directions: np.ndarray  # [A, H] each routing axis's pert_repr factor (unit norm)
    common_gene_loading: np.ndarray  # [G] the common routing direction's leading gene factor
    depth: tuple[DepthRouting, ...] = ()  # routing read at each backbone block, in depth order


@dataclass(frozen=True)
class ClusterInference:
    """Inference for the mean of a per-KD quantity over KDs in output clusters (`stats.interventions`).

    estimate: the mean over KDs; lower / bound: one-sided 95 % lower and upper bounds, the percentile interval of a
    cluster bootstrap over n_bootstrap resamples (each within the range of the cluster means, so within the
    statistic's); p_value: one-sided (estimate > 0), referred to `p_reference` — "label permutation" (n_null joint
    permutations of the cluster labels, floor 1/(n_null + 1)), "cluster sign flip" (n_null sign patterns of the
    cluster sums, all of them when exact: floor 2^−C) or "none" (NaN: the row decides by its bounds); n_clusters: C.
    """

    estimate: float
    lower: float
    bound: float
    p_value: float
    n_null: int
    exact: bool
    n_clusters: int
    p_reference: str
    n_bootstrap: int

    @property
    def p_floor(self) -> float:
        """The smallest p the reference can give: 1/n_null for an exact sign flip, else 1/(n_null + 1)."""
        if self.n_null == 0:
            return float("nan")
        return 1.0 / self.n_null if self.exact else 1.0 / (self.n_null + 1)


@dataclass(frozen=True)
class DistanceControl:
    """The centroid move against random moves of the same size (`stats.interventions`, distance control).

    probe_ratio, matched_moves: the settings (the smallest distance ratio the comparison is read at; random moves
    per KD); ratio_low / ratio_median / ratio_high: the 10th, 50th and 90th percentiles over KDs of the distance
    ratio ‖c₋ₖ − p_k‖ / ‖p_k − p_ctrl‖; amplified: share of KDs whose KD-specific part was amplified to probe_ratio;
    amplification: median λ; probe_cosine / matched_cosine: mean cos with ΔY at the probe point of the centroid's
    response / of the matched moves'; excess: the mean excess cost matched − centroid cosine (cosine units), with
    cluster-bootstrap bounds (p_reference "none").
    """

    probe_ratio: float
    matched_moves: int
    ratio_low: float
    ratio_median: float
    ratio_high: float
    amplified: float
    amplification: float
    probe_cosine: float
    matched_cosine: float
    excess: ClusterInference


@dataclass(frozen=True)
class SubstitutionTest:
    """Centroid substitution (`stats.interventions`): is a KD's response carried by what its cluster's embeddings share?

    n_kds substituted KDs (in clusters of ≥ 3), random_groups joint label permutations (each KD's group under each:
    the random groups). cosine / random_cosine: mean cos(ΔY(c), ΔY_k) with c the cluster's leave-one-out centroid /
    a random group's (0 where the model gives no response); share / random_share: *median* over KDs of the share of
    ΔY_k reproduced, 1 − ‖ΔY(c) − ΔY_k‖²/‖ΔY_k‖²; size_ratio: median ‖ΔY(c)‖/‖ΔY_k‖; no_response: share of KDs
    whose centroid gave exactly no response; gain: the mean of d_k = cosine − random cosine (cosine units), p from
    the label permutations; distance: the distance control.
    """

    n_kds: int
    random_groups: int
    cosine: float
    random_cosine: float
    share: float
    random_share: float
    size_ratio: float
    no_response: float
    gain: ClusterInference
    distance: DistanceControl


@dataclass(frozen=True)
class InterchangeTest:
    """Interchange across clusters (`stats.interventions`): the cluster-shared component of p_k (its projection on the
    span of the cluster centroids, of dimension `rank`) swapped for another cluster's.

    accuracy: share of the n_kds interventions whose response is closer to the target cluster's mean response than
    to the source's; null_accuracy: the same swap along a random subspace of the same rank; gain: the mean per-KD
    difference of successes (accuracy − null_accuracy), with its cluster-level inference."""

    n_kds: int
    rank: int
    accuracy: float
    null_accuracy: float
    gain: ClusterInference


@dataclass(frozen=True)
class InterventionsResult:
    """The interventions stage: the model's responses to substituted pert_repr, scored.

    table: per substituted KD — kd, cluster, cosine, share, size_ratio, random_cosine, random_share, gain (centroid
    substitution), distance_ratio, amplification, probe_cosine, matched_cosine, excess_cost (distance control) and target, interchange_success, interchange_null_success; substitution / interchange: the tests
    (interchange None with fewer than 2 clusters); n_sets: forward-pass sets evaluated (points × R draws);
    seconds: wall time of the stage.
    """

    key: str
    table: pd.DataFrame
    substitution: SubstitutionTest
    interchange: InterchangeTest | None
    n_sets: int
    seconds: Annotated[float, Measured]


@dataclass(frozen=True)
class SteeringResult:
    """The steering stage: ΔY as p moves along each leading routing axis (`stats.interventions.steering_table`).

    table: axis, kd (the axis's highest scorer, where steering starts), step (units of `scale`, the median
    ‖p_k − p_ctrl‖), distance, relative_error of the first-order prediction J_k·v·step, cos_first_order, cos_loading;
    trust_radius [A]: the largest |step| with relative error below `tolerance` at every smaller step; seconds.
    """

    key: str
    table: pd.DataFrame
    trust_radius: tuple[float, ...]
    scale: float
    tolerance: float
    seconds: Annotated[float, Measured]


@dataclass(frozen=True)
class QualityResult:
    """Part 0, the quality stage: the model's predicted cells against the observed ones, through cell-eval.

    kd_table: per scored KD × predictor ("model", "baseline", "ceiling") × reference ("control", "perturbed mean"):
    kd, predictor, reference and one column per cell-eval metric; overall: the mean over KDs per group ("all", and
    "seen" / "held out" when the split is known), predictor and reference (group, predictor, reference, n_kds, the
    metrics); status: "" when scored, else why not (then both tables are empty); unscored: KDs of the analysis without
    enough observed cells; held_out: the KDs held out of training (None: split not known) and split_source where that
    came from; well_predicted: the KDs the model predicts better than the baseline (the sensitivity's subset);
    sensitivity / sensitivity_evidence: the call and its statistics on them (None: too few); peak_mb: the process's
    peak resident memory by the stage's end (MB, an upper bound for the stage); cell_eval: cell-eval's version;
    split_calls: when the split is known, {"seen", "held out"}: (call, statistics) re-read on those KDs (None: too
    few); metrics: cell-eval's metrics computed; de_metrics: whether its differential-expression metrics are among
    them, and de_reason why (the config field de_metrics and, for "auto", the number of scored KDs).
    """

    key: str
    kd_table: pd.DataFrame
    overall: pd.DataFrame
    status: str
    unscored: tuple
    held_out: tuple | None
    split_source: str
    well_predicted: tuple
    sensitivity: Verdict | None
    sensitivity_evidence: RoutingEvidence | None
    seconds: Annotated[float, Measured]
    peak_mb: Annotated[float, Measured]
    cell_eval: str
    split_calls: dict[str, tuple[Verdict | None, RoutingEvidence | None]] | None = None
    metrics: tuple = ()
    de_metrics: bool = False
    de_reason: str = ""


@dataclass(frozen=True)
class LineResults:
    """One cell line (`cell_line` None: the data's only cell type): its provenance and the record of each of its
    stages, one field per stage, named as the stage (`pipeline.stages.LINE_STAGES`)."""

    cell_line: str | None
    provenance: dict
    effects: EffectsResult
    interventions: InterventionsResult
    jacobians: JacobiansResult
    routing: RoutingResult
    steering: SteeringResult
    quality: QualityResult


@dataclass(frozen=True)
class AcrossResult:
    """Routing across cell lines: per-KD cosines between the primary line and each other line, and the paired
    comparisons (`stats.consistency`). table: line_a, line_b, kd, cluster (primary line's), cos_output, cos_jacobian,
    their baselines, KD-specific cosines (each line's common direction projected off), difference (specific) and
    raw_difference; tests: per pair of lines its `PairedDifference`s (KD-specific, raw)."""

    key: str
    table: pd.DataFrame
    tests: tuple[PairedDifference, ...]
    seconds: Annotated[float, Measured]

    @property
    def pairs(self) -> tuple:
        """(primary line, other line) for each comparison, in order."""
        return tuple(dict.fromkeys((t.line_a, t.line_b) for t in self.tests))

    def pair_tests(self, line_a: str, line_b: str) -> tuple:
        """The paired comparisons of one pair of lines: KD-specific first, then raw."""
        return tuple(t for t in self.tests if (t.line_a, t.line_b) == (line_a, line_b))


@dataclass(frozen=True)
class Results:
    """Every line's results; the first listed line is the primary one, which `effects`, `routing` and the report's
    main sections show. stage_paths: {stage label: cache folder} of every stage read."""

    config: AnalysisConfig
    lines: tuple
    across: AcrossResult | None = None
    stage_paths: dict | None = None

    @property
    def effects(self) -> EffectsResult:
        return self.lines[0].effects

    @property
    def routing(self) -> RoutingResult:
        return self.lines[0].routing

    @property
    def interventions(self) -> InterventionsResult | None:
        return self.lines[0].interventions

    @property
    def steering(self) -> SteeringResult | None:
        return self.lines[0].steering

    @property
    def provenance(self) -> dict:
        return self.lines[0].provenance

    @property
    def quality(self) -> QualityResult | None:
        return self.lines[0].quality


@dataclass(frozen=True)
class StudentizedTest:
    """A KD-level statistic with its delete-one-KD jackknife standard error and a studentized test.

    p_value: one-sided (statistic > 0), from the `reference` distribution. "permutation": the permutation p of
    statistic / SE, KD labels permuted `n_permutations` times, with the +1 correction (DiCiccio & Romano 2017): exact
    when the matrices are independent, asymptotically valid when they are merely uncorrelated (a plain permutation of
    the raw statistic is not: Model-A lookups inflate its variance). "normal" (large K, `stats.nulls`'s
    `normal_z`): Φ̄ of the statistic's centred pair sum over its standard error from the Hoeffding decomposition,
    n_permutations 0; "normal+permutation": that p fell near α (`stats.nulls.BORDERLINE`), so the permutation p
    from n_permutations permutations replaced it. NaN when the statistic is undefined. upper_bound: statistic + z₀.₉₅·SE (the jackknife SE, under
    either reference), the one-sided 95 % upper bound that an equivalence ("smaller than the smallest effect of
    interest") claim needs.
    """

    statistic: float
    standard_error: float
    p_value: float
    n_permutations: int
    reference: str = "permutation"  # "permutation", "normal" or "normal+permutation" (`stats.nulls.refer`)

    @property
    def upper_bound(self) -> float:
        return self.statistic + Z_ONE_SIDED_95 * self.standard_error

    @property
    def lower_bound(self) -> float:
        return self.statistic - Z_ONE_SIDED_95 * self.standard_error


@dataclass(frozen=True)
class ClusterContrast:
    """Same- vs cross-cluster C_jac over KDs in clusters ≥ 1 (weak-effect group 0 excluded).

    difference: mean(same) − mean(cross) in C_jac units; spread: SD of those KDs' off-diagonal C_jac, the unit a
    reader can judge the difference in; auc: P(same pair > cross pair); rank_sum_p: the seed's pair-level
    Mann–Whitney test (anti-conservative: pairs share KDs); test: the standardized difference (difference / spread)
    with its delete-one-KD jackknife SE and the cluster-label permutation p of difference / SE (studentized).
    """

    n_same: int
    n_cross: int
    mean_same: float
    mean_cross: float
    difference: float
    spread: float
    auc: float
    rank_sum_p: float
    test: StudentizedTest
    pair_share: float = float("nan")  # n_same / (n_same + n_cross)

    @property
    def r_scale(self) -> float:
        """√(q(1 − q)), q the share of same-cluster pairs: the standardized difference × this is the point-biserial
        r of the similarity with the same-cluster indicator — the contrast on the Mantel r's scale (exactly)."""
        return float(np.sqrt(self.pair_share * (1 - self.pair_share)))

    @property
    def r(self) -> float:
        return self.test.statistic * self.r_scale

    @property
    def r_bound(self) -> float:
        return self.test.upper_bound * self.r_scale


@dataclass(frozen=True)
class Spread:
    """SD and mean of the off-diagonal entries of C_jac and C_out.

    A model that routes every KD the same way has C_jac ≈ 1 everywhere; correlations computed on such a matrix
    describe numerical noise, not routing (`verdict.DecisionRule.min_dissimilarity`).
    """

    jac_sd: float
    jac_mean: float
    out_sd: float
    out_mean: float


@dataclass(frozen=True)
class Decomposition:
    """Unit-norm Jacobians split into the direction of their mean over KDs (common routing) and each KD's part
    orthogonal to it (`stats.decomposition.decompose`). common_share + specific_share = 1 (shares of Σ_k ‖J_k/‖J_k‖‖²);
    spec_mean / spec_sd: mean and SD of the off-diagonal C_jac^spec."""

    common_share: float
    specific_share: float
    spec_mean: float
    spec_sd: float


@dataclass(frozen=True)
class ResponseShares:
    """What produces the responses (`stats.decomposition.response_shares`), over the n_kds strong-effect KDs: the
    median of ‖c_k‖ / ‖y_k‖ (common routing, `common_median`) and of ‖s_k‖ / ‖y_k‖ (KD-specific routing,
    `specific_median`; its 90th percentile `specific_q90`), y_k = Ĵ_k·Δp_k with Ĵ_k the Jacobian averaged over
    `path_points` points of the path p_ctrl → p_k (0: the local J_k, the first order); and the median share of ΔY_k
    that y_k explains (`explained_median`: the shares describe ΔY_k as far as it does); specific_low / specific_high:
    95 % percentile interval of the KD-specific median over n_bootstrap resamples of whole output clusters (NaN
    without)."""

    n_kds: int
    common_median: float
    specific_median: float
    specific_q90: float
    explained_median: float
    path_points: int = 0
    specific_low: float = float("nan")
    specific_high: float = float("nan")
    n_bootstrap: int = 0


@dataclass(frozen=True)
class DepthRouting:
    """Routing read at one depth: the Jacobians of backbone block ℓ's set-mean hidden state w.r.t. pert_repr ([D, H]
    per KD), split as the output's are (`stats.decomposition.decompose`), with the two deciding statistics on their
    KD-specific part C_jac^(ℓ),spec (`stats.evidence.routing_by_depth`).

    block: ℓ, 1-based in depth order; mantel: studentized Mantel r(C_out, C_jac^(ℓ),spec); contrast: same- vs
    cross-cluster C_jac^(ℓ),spec; raw_r: Pearson r(C_out, C_jac^(ℓ)) of the raw cosines, descriptive; reading: what
    the block shows by the call's own rule (`stats.verdict.depth_reading`: "common only", "cluster-shared",
    "ruled out", "not shown").
    """

    block: int
    decomposition: Decomposition
    mantel: StudentizedTest
    contrast: ClusterContrast
    raw_r: float
    reading: str = ""


@dataclass(frozen=True)
class NoiseFloor:
    """How well C_out and C_jac^spec reproduce across independent control-cell draws (`stats.reliability`).

    The R draws are split into two halves of `half_draws` draws; each half gives its own ΔY (so C_out) and its own
    Jacobians (so C_jac^spec, from that half's Gram). half_r_*: Pearson r between the two halves' upper triangles,
    with its delete-one-KD jackknife SE; reliability_*: the Spearman–Brown step-up 2r / (1 + r), the reliability of
    the matrix from all R draws (rsatoolbox's split-half noise ceiling); corrected_r: the deciding Mantel r divided
    by √(reliability_out · reliability_jac) (Spearman's correction for attenuation; NaN when a reliability ≤ 0).
    """

    half_draws: tuple[int, int]
    half_r_out: float
    half_r_out_se: float
    half_r_jac: float
    half_r_jac_se: float
    reliability_out: float
    reliability_jac: float
    corrected_r: float

    @property
    def reliability_jac_se(self) -> float:
        """Delta-method SE of the Spearman–Brown reliability: d(2r/(1+r))/dr = 2/(1+r)²."""
        return 2 * self.half_r_jac_se / (1 + self.half_r_jac) ** 2


@dataclass(frozen=True)
class ClusterLevel:
    """r between cluster-pair means of C_out and of C_jac^spec, over pairs of *different* clusters (`n_pairs` =
    C(C−1)/2 for C clusters ≥ 1): does routing between clusters follow output similarity between clusters? The
    deciding rows read the same-cluster blocks; this one does not. p: one-sided permutation of cluster identities
    (`n_permutations`, plain r — C is small, no jackknife)."""

    n_clusters: int
    n_pairs: int
    r: float
    p_value: float
    n_permutations: int


@dataclass(frozen=True)
class RoutingEvidence:
    """Every routing statistic the verdict reads (n_kds KDs; the Mantel statistics over the n_pairs pairs of the
    n_strong KDs with a strong effect, `evidence.strong_effect_kds`).

    mantel_pearson / mantel_spearman: studentized Mantel of C_out vs the KD-specific C_jac^spec (`decomposition`);
    pearson_ci: 95 % KD-bootstrap CI of r; contrast: same- vs cross-cluster C_jac^spec; within_mantel: the Mantel
    over same-cluster pairs; raw_mantel / raw_contrast: the same on the raw C_jac (reported beside); partial_mantel r(C_jac, C_out | C_rep) and mantel_out_rep
    r(C_out, C_rep): descriptive; keyed_lookup_r: r(C_jac, C_out ⊙ C_rep), how well a per-KD lookup keyed on the
    KD's own embedding would reproduce the routing matrix (the construct's blind spot, see `verdict`).
    borderline: under the normal reference, the band of p decided by `borderline_permutations` KD-label permutations
    instead (`nulls.BORDERLINE`); None under the permutation reference.
    """

    n_kds: int
    n_strong: int
    n_pairs: int
    mantel_pearson: StudentizedTest
    mantel_spearman: StudentizedTest
    pearson_ci: tuple[float, float]
    contrast: ClusterContrast
    spread: Spread
    partial_mantel: StudentizedTest | None = None
    mantel_out_rep: StudentizedTest | None = None
    keyed_lookup_r: float | None = None
    decomposition: Decomposition | None = None
    within_mantel: StudentizedTest | None = None  # r(C_out, C_jac^spec) over same-cluster pairs (graded, not blocks)
    raw_mantel: StudentizedTest | None = None  # r(C_out, C_jac) on the raw matrix (reported)
    raw_contrast: ClusterContrast | None = None  # same − cross on the raw C_jac (reported)
    noise_floor: NoiseFloor | None = None  # split-half reliabilities (None: one control draw, not measured)
    cluster_level: ClusterLevel | None = None  # r over between-cluster means (separates, never decides)
    borderline: tuple[float, float] | None = None
    borderline_permutations: int = 0
    response: ResponseShares | None = None  # what produces the responses (None: no Jacobians' responses, e.g. worlds)
    output_clusters: ClusterExistence | None = None  # do the outputs cluster at all (None: not tested)


@dataclass(frozen=True)
class AxisReading:
    """One SVD axis read through enrichment: the best pathway shown on both sides (or none).

    term: the matched pathway ("" if none); gene_fdr / gene_nes: its prerank result on the gene loadings (NES sign =
    the response direction in high-scoring KDs); kd_fdr / kd_nes: on the KD scores (NES > 0: the high-score end);
    output_overlap: norm of the gene loading's projection onto the span of ΔY's leading gene loadings (1 = inside).
    """

    axis: int
    term: str
    gene_fdr: float
    gene_nes: float
    kd_fdr: float
    kd_nes: float
    output_overlap: float

    def interpretable(self, fdr: float) -> bool:
        return bool(self.term) and self.gene_fdr < fdr and self.kd_fdr < fdr and self.kd_nes > 0


@dataclass(frozen=True)
class SvdEvidence:
    """What the SVD of the unit-norm Jacobians shows, beside the seed's literal criterion on the same axes.

    seed_*: best axis-1 gene term and KD term by FDR, whatever they are (the seed's test); axes: `AxisReading` of
    the leading n_axes routing axes; output_axes: the same for the SVD of unit-norm ΔY; min_principal_cosine: cosine
    of the largest principal angle between the two sets of gene loadings (1 = the same subspace).
    """

    fdr: float
    overlap_threshold: float
    n_axes: int
    seed_gene_term: str
    seed_gene_fdr: float
    seed_kd_term: str
    seed_kd_fdr: float
    seed_kd_nes: float
    axes: tuple[AxisReading, ...]
    output_axes: tuple[AxisReading, ...]
    min_principal_cosine: float

    @property
    def seed_held(self) -> bool:
        return bool(self.seed_gene_fdr < self.fdr and self.seed_kd_fdr < self.fdr)

    @property
    def n_interpretable(self) -> int:
        return sum(a.interpretable(self.fdr) for a in self.axes)

    @property
    def n_output_interpretable(self) -> int:
        return sum(a.interpretable(self.fdr) for a in self.output_axes)

    @property
    def n_beyond_output(self) -> int:
        return sum(a.interpretable(self.fdr) and a.output_overlap < self.overlap_threshold for a in self.axes)


@dataclass(frozen=True)
class Criterion:
    """One row of the verdict, as numbers (`present.wording` words it). id: which criterion (`stats.verdict.CRITERIA`);
    family: its role (`stats.verdict.FAMILIES`; "decides" rows make the call); supports: "Model B", "Model A" or
    "neither" for deciding rows, "" otherwise; params: every number the row was read with and against (thresholds, α,
    the permutation count of its p as `n_permutations`, the test's reference, …), as scanpy's `uns[key]["params"]`."""

    id: str
    family: str
    value: float
    p_value: float | None
    held: bool
    supports: str = ""
    bound: float | None = None  # one-sided 95 % upper bound of `value` (deciding rows)
    margin: float | None = None  # the smallest effect of interest that bound is compared with
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The call and the rows it rests on. call: one of `CALLS`; degenerate_matrix: "C_out" when the call is
    "degenerate" (responses all alike), "C_jac" when it is "global readout" by the floor (the KD-specific share of
    the Jacobian energy below `min_specific_share`), "response" when it is "global readout" because the KD-specific
    routing produces less than `min_response_share` of the responses, else "".
    The words (meaning, reason, caveat) are the presentation's (`present.prose`)."""

    call: str
    criteria: tuple[Criterion, ...]
    degenerate_matrix: str = ""
    use: str = ""  # is the encoder geometry used? one of `USES`; "" when no intervention was run

    @property
    def deciding(self) -> tuple:
        return tuple(c for c in self.criteria if c.family == "decides")

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(c) for c in self.criteria])


@dataclass(frozen=True)
class PairedDifference:
    """Mean over KDs of d_k = cos J_k − cos ΔY_k between two lines (`measure`: KD-specific or raw cosines), with
    cluster-level inference.

    estimate: mean d over the KDs (unitless, in [−2, 2]; 0 for a model whose routing and outputs are identical in both
    lines when `measure` is "specific"); ci_low/ci_high: cluster-bootstrap percentile interval (level `confidence`);
    p_value: two-sided sign-flip p over the `n_units` clusters; exact: every sign pattern enumerated.
    """

    line_a: str
    line_b: str
    measure: str  # "specific" (cosines of the parts off each line's common direction, `stats.consistency`) or "raw"
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
    def floor(self) -> float:
        """The smallest p the sign flip can give: 2 / 2^C when exact (the observed pattern and its mirror are always
        as extreme), 1 / (n + 1) over n sampled patterns."""
        return 2 / self.n_sign_patterns if self.exact else 1 / (self.n_sign_patterns + 1)

    @property
    def at_floor(self) -> bool:
        """p is the floor: no sign pattern but the observed one (and its mirror) was as extreme, and fewer clusters
        could not have said more."""
        return self.p_value <= self.floor * (1 + 1e-9)

    @property
    def direction(self) -> str:
        """'more', 'less' (routing vs output consistency, significant at alpha with the interval agreeing) or 'no difference'."""
        if self.p_value < self.alpha and self.ci_low > 0:
            return "more"
        if self.p_value < self.alpha and self.ci_high < 0:
            return "less"
        return "no difference"

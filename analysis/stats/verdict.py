"""The verdict: one decision rule over typed statistics; the call and the rows it rests on (the words are
`present.wording`'s).

Routing is first split (`routing.decompose`, exactly from the K × K Gram of the unit-norm Jacobians) into the part
every KD shares — its share of the Jacobian energy, `common_share` — and the KD-specific rest, whose cosine matrix
C_jac^spec the deciding criteria read (the raw C_jac's are reported beside them). A common component makes every
raw cosine high and says nothing about how the rest is routed; the old rule (1 − mean C_jac < 0.01 → "degenerate")
called cluster-shared routing on top of a 99 % common component degenerate, and identical-up-to-noise routing
"negative".

Two deciding criteria on C_jac^spec, on one scale (r) with one smallest effect of interest m = equivalence_r:

- *Output similarity predicts routing similarity*: studentized Mantel r(C_out, C_jac^spec). Model B when p < α
  and r > min_r; ruled out when its one-sided 95 % upper bound (r + z·jackknife SE) is below m.
- *Same-cluster KDs share KD-specific routing*: the studentized same − cross contrast, in SDs (Model B when p < α,
  ≥ min_contrast SD and the difference itself — the share of the KD-specific energy shared within clusters — is at
  least min_cluster_share); as r it is the point-biserial r(C_jac^spec, same-cluster indicator) = d·√(q(1 − q))
  exactly (q: the share of same-cluster pairs), and it is ruled out when that r's bound is below m.

The two read largely the same cluster blocks, so they are not two confirmations: a third, reported row — the Mantel
over same-cluster pairs only, labels permuted within clusters — says whether routing tracks outputs beyond the
blocks (graded) or is shared by the cluster as a block.

What the routing *does* is read from the responses it produces (`decomposition.response_shares`): to first order
ΔY_k ≈ J_k·Δp_k, and the common and KD-specific parts of J_k produce their own parts of it. A share of the Jacobian
energy cannot say this — a common direction orthogonal to every Δp_k can carry 99 % of the energy and produce none of
the response, and an early-stopped run's KD-specific 1e-4 of the energy produced 1–5 % of its responses — so the
energy share is only a numerical floor, and the response share decides whether the KD-specific structure is read.

Calls:
- degenerate: the responses (C_out) have a KD-specific share below `min_specific_share` — nothing to compare.
- global readout: the KD-specific share of the Jacobian energy is below `min_specific_share` (a numerical floor:
  one linear map for every KD leaves 2.5e-6 on the known answer), whatever its structure; or the KD-specific routing
  produces a median share of the first-order response below `min_response_share` (read where the first order
  explains at least FIRST_ORDER_EXPLAINED of ΔY_k); or, where the response shares are not read, cluster sharing is
  ruled out by both criteria and the common component carries at least `global_share` of the energy.
- cluster circuits (Model B): the KD-specific routing produces a material share of the responses, both criteria
  show it shared within output clusters, and the outputs cluster at all (`clustering.cluster_existence`: a best
  silhouette beyond that of a Gaussian with ΔY's covariance, p < α).
- graded routing: as cluster circuits, but the outputs form no clusters beyond that reference — routing similarity
  tracks output similarity as any smooth readout of the embedding makes it, with no clusters to share routing within
  (a positive Mantel alone is what such a readout produces; Model B needs the clusters).
- per-KD (Model A evidence): both criteria rule cluster sharing out and the KD-specific routing produces a material
  share of the responses (where the response shares are not read: carries more than 1 − global_share of the energy).
- mixed: one criterion shows cluster sharing, the other rules it out.
- inconclusive: anything else (a criterion neither shown nor ruled out).
- unreliable: the noise floor was measured (R ≥ 2 control draws, split in halves: `stats.reliability`) and the
  split-half reliability of C_jac^spec is below `min_reliability`, where the call would otherwise read the
  KD-specific structure (cluster circuits, per-KD, mixed, inconclusive): that structure is mostly draw-to-draw
  noise. A global readout stays one (its KD-specific part is small, and noise only confirms it carries no routing).
  With one draw the noise floor is not measured and the calls above stand.

Two more rows are shown and never decide: the noise floor (reliabilities, the Mantel r corrected for attenuation)
and the cluster-level r over between-cluster means, which the two deciding rows (both reading same-cluster blocks)
do not see.

Is the geometry used? (a second question, asked of the model by intervention, `stats.interventions`): two rows on
one margin (`substitution_margin`, cosine) — the centroid-substitution gain over random groups (shown: p < α and at
least the margin; ruled out: one-sided 95 % upper bound below it) and its distance control, the excess cost of the
centroid move over random moves of the same size (ruled out: upper bound below the margin; shown: at least the
margin, lower bound above 0). "not used" when the gain is ruled out; "used" when the gain is shown and the excess
ruled out; "partly used" when both are shown (the model reads the KD-specific part beyond the shared one);
"inconclusive" otherwise (also with fewer than 2 substitutable clusters); the interchange row is reported beside
them. `Verdict.use` holds the answer; the routing call is unchanged
by it, and the words combine the two (`present.prose`).

The SVD, the partial Mantel and the seed's pair-level tests are reported beside the deciding rows, labelled; they
never change the call.

The construct's limit: a per-KD lookup whose gate reads the KD's own embedding has J_k = w_k ⊗ p_k/‖p_k‖², so
C_jac = C_out ⊙ C_rep, and local Jacobians cannot tell it from shared routing when C_rep clusters like C_out. The
interventions can: substituting the cluster's shared part collapses such a lookup's response. Without them, every
cluster-circuits call carries that caveat, with r(C_jac, C_out ⊙ C_rep) beside it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..config import DecisionRule
from ..results import (
    ClusterContrast,
    Criterion,
    DepthRouting,
    InterchangeTest,
    ResponseShares,
    RoutingEvidence,
    StudentizedTest,
    SubstitutionTest,
    SvdEvidence,
    Verdict,
)

# Calls that read the KD-specific structure, and so become "unreliable" when that structure does not reproduce.
READS_SPECIFIC_STRUCTURE = ("cluster circuits", "per-KD", "mixed", "inconclusive")
# The median share of ΔY_k the first order J_k·Δp_k must explain for the response shares to describe the responses.
FIRST_ORDER_EXPLAINED = 0.5
# Every criterion a verdict can hold (`Criterion.id`, in the order rows are made) and the roles they play
# (`Criterion.family`): "decides" rows make the call, "decides_share" and "noise_floor" refine it, "decides_use"
# answers the interventions' question, the others are reported beside them. `present.wording` words each.
CRITERIA = ("mantel_specific", "contrast_specific", "response_share", "common_share", "output_clusters", "within_mantel", "cluster_level",
            "noise_floor", "mantel_raw", "contrast_raw", "substitution", "distance_control", "interchange",
            "seed_contrast", "seed_mantel",
            "partial_mantel", "svd_seed", "svd_both_sides", "svd_beyond_output")
FAMILIES = ("decides", "decides_share", "decides_clusters", "separates", "noise_floor", "raw", "decides_use", "interventions", "seed",
            "reported", "svd")


def _support(significant: bool, large_enough: bool, equivalent: bool) -> str:
    if significant and large_enough:
        return "Model B"
    return "Model A" if equivalent else "neither"


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


_p = _finite


def mantel_support(m: StudentizedTest, rule: DecisionRule) -> str:
    """The model the Mantel row supports: "Model B", "Model A" (ruled out) or "neither"."""
    return _support(m.p_value < rule.alpha, m.statistic > rule.min_r, m.upper_bound < rule.equivalence_r)


def contrast_support(c: ClusterContrast, rule: DecisionRule) -> str:
    """The model the contrast row supports: "Model B", "Model A" (ruled out) or "neither"."""
    return _support(c.test.p_value < rule.alpha, c.test.statistic >= rule.min_contrast
                    and c.difference >= rule.min_cluster_share, c.r_bound < rule.equivalence_r)


def depth_reading(depth: DepthRouting, rule: DecisionRule) -> str:
    """What one block's routing shows, by the call's own rule: "common only" (KD-specific share below
    min_specific_share), "cluster-shared" (both deciding criteria show Model B), "ruled out" (both rule it out) or
    "not shown"."""
    if not depth.decomposition.specific_share >= rule.min_specific_share:
        return "common only"
    supports = (mantel_support(depth.mantel, rule), contrast_support(depth.contrast, rule))
    if supports == ("Model B", "Model B"):
        return "cluster-shared"
    return "ruled out" if supports == ("Model A", "Model A") else "not shown"


def read_depth(depth: tuple[DepthRouting, ...], rule: DecisionRule) -> tuple[DepthRouting, ...]:
    """The blocks' records with their readings (`depth_reading`) filled in."""
    return tuple(replace(d, reading=depth_reading(d, rule)) for d in depth)


def _p_floor(test: StudentizedTest) -> dict:
    """How a studentized test's p was referred: its reference and the permutations behind it (0: none)."""
    return {"reference": test.reference, "n_permutations": test.n_permutations}


def deciding_criteria(evidence: RoutingEvidence, rule: DecisionRule) -> tuple[Criterion, Criterion]:
    """The two rows the call rests on (both on C_jac^spec, bounds on the r scale), each with the model it supports."""
    m, c = evidence.mantel_pearson, evidence.contrast
    a, margin = rule.alpha, rule.equivalence_r
    m_support, c_support = mantel_support(m, rule), contrast_support(c, rule)
    mantel_row = Criterion(
        "mantel_specific", "decides", m.statistic, _p(m.p_value), m_support == "Model B", m_support,
        _finite(m.upper_bound), margin,
        {"alpha": a, "min_r": rule.min_r, **_p_floor(m), "ci_low": evidence.pearson_ci[0],
         "ci_high": evidence.pearson_ci[1], "spearman": evidence.mantel_spearman.statistic})
    contrast_row = Criterion(
        "contrast_specific", "decides", c.r, _p(c.test.p_value), c_support == "Model B", c_support,
        _finite(c.r_bound), margin,
        {"alpha": a, "min_contrast": rule.min_contrast, "min_cluster_share": rule.min_cluster_share,
         "r_scale": c.r_scale, **_p_floor(c.test), "sd": c.test.statistic, "sd_bound": c.test.upper_bound,
         "mean_same": c.mean_same, "mean_cross": c.mean_cross, "spread": c.spread, "pair_share": c.pair_share})
    return mantel_row, contrast_row


def structure_criteria(evidence: RoutingEvidence, rule: DecisionRule) -> tuple:
    """The share row (decides between global readout and per-KD routing) and the rows that separate blocks from
    graded tracking and show the raw matrix."""
    d, a = evidence.decomposition, rule.alpha
    rows = [response_criterion(evidence, rule)] if evidence.response is not None else []
    if evidence.output_clusters is not None:
        x = evidence.output_clusters
        rows.append(Criterion("output_clusters", "decides_clusters", x.silhouette, _p(x.p_value),
                              bool(x.p_value < rule.alpha),
                              params={"alpha": rule.alpha, "n_permutations": x.n_draws, "null_median": x.null_median,
                                      "null_q95": x.null_q95,
                                      "n_draws": x.n_draws, "n_kds": x.n_kds, "stability": x.stability}))
    rows += [Criterion("common_share", "decides_share", d.common_share, None, d.common_share >= rule.global_share,
                      params={"specific_share": d.specific_share, "spec_mean": d.spec_mean, "spec_sd": d.spec_sd,
                              # the call's floors (`decide`): the share row carries them whether or not they bit
                              "min_specific_share": rule.min_specific_share, "global_share": rule.global_share,
                              "min_reliability": rule.min_reliability})]
    w = evidence.within_mantel
    if w is not None:
        rows.append(Criterion("within_mantel", "separates", w.statistic, _p(w.p_value),
                              bool(w.p_value < a and w.statistic > 0), bound=_finite(w.upper_bound),
                              margin=rule.equivalence_r, params={"alpha": a, **_p_floor(w)}))
    if evidence.cluster_level is not None:
        cl = evidence.cluster_level
        rows.append(Criterion("cluster_level", "separates", cl.r, _p(cl.p_value), bool(cl.p_value < a and cl.r > 0),
                              params={"alpha": a, "n_permutations": cl.n_permutations, "n_clusters": cl.n_clusters,
                                      "n_pairs": cl.n_pairs}))
    if evidence.noise_floor is not None:
        rows.append(noise_floor_criterion(evidence, rule))
    if evidence.raw_mantel is not None:
        rm, rc = evidence.raw_mantel, evidence.raw_contrast
        rows += [Criterion("mantel_raw", "raw", rm.statistic, _p(rm.p_value), bool(rm.p_value < a),
                           bound=_finite(rm.upper_bound), margin=rule.equivalence_r, params={"alpha": a, **_p_floor(rm)}),
                 Criterion("contrast_raw", "raw", rc.r, _p(rc.test.p_value), bool(rc.test.p_value < a),
                           bound=_finite(rc.r_bound), margin=rule.equivalence_r,
                           params={"alpha": a, **_p_floor(rc.test), "sd": rc.test.statistic,
                                   "mean_same": rc.mean_same, "mean_cross": rc.mean_cross})]
    return tuple(rows)


def noise_floor_criterion(evidence: RoutingEvidence, rule: DecisionRule) -> Criterion:
    """The noise-floor row: the split-half reliability of C_jac^spec, against `min_reliability`."""
    nf = evidence.noise_floor
    return Criterion("noise_floor", "noise_floor", nf.reliability_jac, None,
                     bool(nf.reliability_jac >= rule.min_reliability),
                     params={"min_reliability": rule.min_reliability, "half_draws": nf.half_draws,
                             "half_r_jac": nf.half_r_jac, "half_r_jac_se": nf.half_r_jac_se,
                             "reliability_out": nf.reliability_out, "corrected_r": nf.corrected_r})


def reported_criteria(evidence: RoutingEvidence, rule: DecisionRule, svd: SvdEvidence | None) -> tuple:
    """Rows shown beside the deciding ones: the seed's pair-level versions (on the raw C_jac, as the seed wrote
    them), the partial Mantel, the SVD."""
    a = rule.alpha
    c = evidence.raw_contrast or evidence.contrast
    m = evidence.raw_mantel or evidence.mantel_pearson
    rows = [
        Criterion("seed_contrast", "seed", c.difference, _p(c.rank_sum_p), bool(c.rank_sum_p < a and c.difference > 0),
                  params={"alpha": a, "auc": c.auc}),
        Criterion("seed_mantel", "seed", m.statistic, None, bool(m.statistic > rule.min_r), params={"min_r": rule.min_r}),
    ]
    if evidence.partial_mantel is not None:
        pm = evidence.partial_mantel
        rows.append(Criterion("partial_mantel", "reported", pm.statistic, _p(pm.p_value),
                              bool(pm.p_value < a and pm.statistic > 0), params={"alpha": a, **_p_floor(pm)}))
    if svd is not None:
        held = [x for x in svd.axes if x.interpretable(svd.fdr)]
        rows += [
            Criterion("svd_seed", "svd", max(svd.seed_gene_fdr, svd.seed_kd_fdr), None, svd.seed_held,
                      params={"fdr": svd.fdr, "gene_term": svd.seed_gene_term, "kd_term": svd.seed_kd_term,
                              "kd_nes": svd.seed_kd_nes}),
            Criterion("svd_both_sides", "svd", float(svd.n_interpretable), None, svd.n_interpretable > 0,
                      params={"fdr": svd.fdr, "n_axes": svd.n_axes,
                              "axes": [{"axis": x.axis, "term": x.term, "kd_nes": x.kd_nes, "gene_nes": x.gene_nes}
                                       for x in held]}),
            Criterion("svd_beyond_output", "svd", svd.min_principal_cosine, None, svd.n_beyond_output > 0,
                      params={"overlap_threshold": svd.overlap_threshold, "n_beyond_output": svd.n_beyond_output,
                              "n_output_interpretable": svd.n_output_interpretable}),
        ]
    return tuple(rows)


def _sign_flip_floor(inference) -> dict:
    """How a cluster inference's p was referred: its reference, the null draws behind it and the smallest p it can
    give (an exact sign flip over C clusters: 2^−C)."""
    return {"n_permutations": 0 if inference.exact else inference.n_null, "p_reference": inference.p_reference,
            "p_floor": inference.p_floor}


def use_criteria(substitution: SubstitutionTest, interchange: InterchangeTest | None,
                 rule: DecisionRule) -> tuple[Criterion, ...]:
    """The interventions' rows: centroid substitution's gain over random groups and its distance control (together
    they answer whether the geometry is used: `use_answer`), and interchange (reported). `bound` is the upper bound
    as on every row; params["lower"] the lower one, which a claim that an effect is there quotes."""
    s, a, m = substitution, rule.alpha, rule.substitution_margin
    g, d = s.gain, s.distance
    e = d.excess
    decided = g.n_clusters >= 2
    gain_support = ("used" if decided and g.p_value < a and g.estimate >= m else
                    "not used" if decided and g.bound < m else "neither")
    # The excess cost: ruled out (the KD-specific part costs no more than a random move of its size) supports "used";
    # shown (at least the margin, lower bound above 0) says the model reads the KD-specific part beyond it.
    excess_support = ("used" if decided and e.bound < m else
                      "not used" if decided and e.lower > 0 and e.estimate >= m else "neither")
    rows = [Criterion("substitution", "decides_use", g.estimate, _p(g.p_value), gain_support == "used", gain_support,
                      _finite(g.bound), m,
                      {"alpha": a, **_sign_flip_floor(g), "random_groups": s.random_groups, "n_clusters": g.n_clusters,
                       "n_kds": s.n_kds, "cosine": s.cosine, "random_cosine": s.random_cosine, "share": s.share,
                       "random_share": s.random_share, "size_ratio": s.size_ratio, "lower": _finite(g.lower),
                       "upper": _finite(g.bound), "n_bootstrap": g.n_bootstrap,
                       "distance_ratio": _finite(d.ratio_median)}),
            Criterion("distance_control", "decides_use", e.estimate, None, excess_support == "used", excess_support,
                      _finite(e.bound), m,
                      {"matched_moves": d.matched_moves, "probe_ratio": d.probe_ratio,
                       "ratio_low": _finite(d.ratio_low), "ratio_median": _finite(d.ratio_median),
                       "ratio_high": _finite(d.ratio_high), "amplified": _finite(d.amplified),
                       "amplification": _finite(d.amplification), "probe_cosine": _finite(d.probe_cosine),
                       "matched_cosine": _finite(d.matched_cosine), "lower": _finite(e.lower),
                       "upper": _finite(e.bound), "n_bootstrap": e.n_bootstrap, "n_clusters": e.n_clusters})]
    if interchange is not None:
        i = interchange
        rows.append(Criterion("interchange", "interventions", i.gain.estimate, _p(i.gain.p_value),
                              bool(i.gain.p_value < a and i.gain.estimate > 0),
                              params={"alpha": a, **_sign_flip_floor(i.gain), "rank": i.rank, "accuracy": i.accuracy,
                                      "null_accuracy": i.null_accuracy, "n_kds": i.n_kds}))
    return tuple(rows)


def readable_response(evidence: RoutingEvidence) -> ResponseShares | None:
    """The response shares when they describe the responses: measured, and the first order J_k·Δp_k explains at least
    FIRST_ORDER_EXPLAINED of ΔY_k (median over the strong KDs). Else None, and the call reads the Jacobian-energy
    shares as before (a sharply gated response's local Jacobian says little about what produced ΔY_k)."""
    r = evidence.response
    return r if r is not None and r.explained_median >= FIRST_ORDER_EXPLAINED else None


def response_criterion(evidence: RoutingEvidence, rule: DecisionRule) -> Criterion:
    """The response row: the median share of the first-order response the KD-specific routing produces, against
    `min_response_share` (held: at least that share, so the KD-specific structure is worth reading)."""
    r = evidence.response
    return Criterion("response_share", "decides_share", r.specific_median, None,
                     bool(r.specific_median >= rule.min_response_share),
                     params={"min_response_share": rule.min_response_share, "common_median": r.common_median,
                             "specific_q90": r.specific_q90, "explained_median": r.explained_median,
                             "first_order_explained": FIRST_ORDER_EXPLAINED, "n_kds": r.n_kds,
                             "path_points": r.path_points,
                             "read": readable_response(evidence) is not None})


def use_answer(rows: tuple[Criterion, ...]) -> str:
    """`Verdict.use` from the substitution and distance-control rows (`use_criteria`; see `stats.interventions`):
    "not used" when the gain is ruled out; "used" when the gain is shown and the excess cost ruled out; "partly
    used" when both are shown; "inconclusive" otherwise."""
    gain, excess = (row.supports for row in rows[:2])
    if gain == "not used":
        return "not used"
    if gain == "used" and excess != "neither":
        return "used" if excess == "used" else "partly used"
    return "inconclusive"


def decide(evidence: RoutingEvidence, rule: DecisionRule, svd: SvdEvidence | None = None,
           substitution: SubstitutionTest | None = None, interchange: InterchangeTest | None = None) -> Verdict:
    """The call and its evidential basis, from the statistics alone (the pipeline, the known answers and the
    calibration all call this one function); with the interventions, also whether the geometry is used."""
    mantel_row, contrast_row = deciding_criteria(evidence, rule)
    criteria = (mantel_row, contrast_row) + structure_criteria(evidence, rule)
    use = ""
    if substitution is not None:
        use_rows = use_criteria(substitution, interchange, rule)
        criteria += use_rows
        use = use_answer(use_rows)
    criteria += reported_criteria(evidence, rule, svd)
    d, s = evidence.decomposition, evidence.spread
    n = evidence.n_kds
    out_specific = (n - 1) / n * (1 - s.out_mean) if n > 1 else 0.0  # the same share for unit-norm ΔY
    if out_specific < rule.min_specific_share:
        return Verdict("degenerate", criteria, "C_out", use)
    if d.specific_share < rule.min_specific_share:
        return Verdict("global readout", criteria, "C_jac", use)
    response = readable_response(evidence)
    if response is not None and response.specific_median < rule.min_response_share:
        return Verdict("global readout", criteria, "response", use)
    supports = (mantel_row.supports, contrast_row.supports)
    clusters = evidence.output_clusters
    if supports == ("Model B", "Model B") and clusters is not None and not clusters.p_value < rule.alpha:
        call = "graded routing"  # routing tracks outputs, but the outputs form no clusters to share routing within
    elif supports == ("Model B", "Model B"):
        call = "cluster circuits"
    elif supports == ("Model A", "Model A"):
        if response is not None:  # the KD-specific routing produces a material share, following no cluster
            call = "per-KD"
        else:
            call = "global readout" if d.common_share >= rule.global_share else "per-KD"
    elif set(supports) == {"Model A", "Model B"}:
        call = "mixed"
    else:
        call = "inconclusive"
    nf = evidence.noise_floor
    if call in READS_SPECIFIC_STRUCTURE and nf is not None and nf.reliability_jac < rule.min_reliability:
        call = "unreliable"
    return Verdict(call, criteria, use=use)

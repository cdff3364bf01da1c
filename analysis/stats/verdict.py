"""The verdict: one decision rule over typed statistics; the call and the rows it rests on (the words are
`present.prose`'s).

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

Calls:
- degenerate: the responses (C_out) have a KD-specific share below `min_specific_share` — nothing to compare.
- global readout: the KD-specific share of the Jacobian energy is below `min_specific_share` (a numerical floor:
  one linear map for every KD leaves 2.5e-6 on the known answer), whatever its structure; or cluster sharing is ruled out by both
  criteria and the common component carries at least `global_share` of the energy.
- cluster circuits (Model B): both criteria show KD-specific routing shared within output clusters.
- per-KD (Model A evidence): both criteria rule cluster sharing out and the KD-specific part carries more than
  1 − global_share of the energy.
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

Is the geometry used? (a second question, asked of the model by intervention, `stats.interventions`): the
centroid-substitution gain decides — "used" when p < α and the gain is at least `substitution_margin`, "not used" when
its one-sided 95 % upper bound is below that margin, "inconclusive" otherwise (also with fewer than 2 substitutable
clusters); the interchange row is reported beside it. `Verdict.use` holds the answer; the routing call is unchanged
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
    RoutingEvidence,
    StudentizedTest,
    SubstitutionTest,
    SvdEvidence,
    Verdict,
)

# Calls that read the KD-specific structure, and so become "unreliable" when that structure does not reproduce.
READS_SPECIFIC_STRUCTURE = ("cluster circuits", "per-KD", "mixed", "inconclusive")


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


def deciding_criteria(evidence: RoutingEvidence, rule: DecisionRule) -> tuple[Criterion, Criterion]:
    """The two rows the call rests on (both on C_jac^spec, bounds on the r scale), each with the model it supports."""
    m, c = evidence.mantel_pearson, evidence.contrast
    a, margin = rule.alpha, rule.equivalence_r
    m_support, c_support = mantel_support(m, rule), contrast_support(c, rule)
    mantel_row = Criterion(
        "Output similarity predicts KD-specific routing similarity", "decides", "Pearson r(C_out, C_jac^spec)",
        m.statistic, f"studentized Mantel ({m.null_phrase('KD-label permutations')}); one-sided 95 % jackknife bound",
        f"B: r > {rule.min_r}, p < {a}; ruled out: bound < {margin}", _p(m.p_value), m_support == "Model B",
        m_support, f"95 % KD-bootstrap CI [{evidence.pearson_ci[0]:.3f}, {evidence.pearson_ci[1]:.3f}]; "
                   f"Spearman {evidence.mantel_spearman.statistic:.3f}", _finite(m.upper_bound), margin)
    contrast_row = Criterion(
        "Same-cluster KDs share KD-specific routing", "decides",
        "point-biserial r(C_jac^spec, same cluster) = (same − cross)/SD × √(q(1−q))", c.r,
        f"studentized same − cross contrast ({c.test.null_phrase('cluster-label permutations')}); one-sided 95 % "
        "jackknife bound",
        f"B: ≥ {rule.min_contrast} SD (r ≥ {rule.min_contrast * c.r_scale:.3g} here) and same − cross ≥ "
        f"{rule.min_cluster_share} (share of KD-specific energy), p < {a}; ruled out: bound < "
        f"{margin} (= {margin / c.r_scale if c.r_scale > 0 else float('nan'):.3g} SD here)", _p(c.test.p_value),
        c_support == "Model B", c_support,
        f"{c.test.statistic:.2f} SD (bound {c.test.upper_bound:.2f} SD); same {c.mean_same:.3g} vs cross "
        f"{c.mean_cross:.3g} (SD {c.spread:.3g}); q = {c.pair_share:.3f}", _finite(c.r_bound), margin)
    return mantel_row, contrast_row


def structure_criteria(evidence: RoutingEvidence, rule: DecisionRule) -> tuple:
    """The share row (decides between global readout and per-KD routing) and the rows that separate blocks from
    graded tracking and show the raw matrix."""
    d, a = evidence.decomposition, rule.alpha
    rows = [Criterion("Routing common to every KD", "decides (share)", "share of Σ‖u_k‖² along the mean unit Jacobian (u_k = J_k/‖J_k‖)",
                      d.common_share, "exact, from the K × K Gram (projection onto the direction of ū)",
                      f"global readout: KD-specific share {d.specific_share:.3g} < {rule.min_specific_share:g}, or "
                      f"cluster sharing ruled out and common ≥ {rule.global_share:g}", None,
                      d.common_share >= rule.global_share,
                      note=f"KD-specific share {d.specific_share:.3g}; C_jac^spec mean {d.spec_mean:.3g}, "
                           f"SD {d.spec_sd:.3g}")]
    w = evidence.within_mantel
    if w is not None:
        rows.append(Criterion("Routing tracks output within clusters (beyond the cluster blocks)", "separates",
                              "Pearson r(C_out, C_jac^spec), same-cluster pairs", w.statistic,
                              f"studentized Mantel within clusters "
                              f"({w.null_phrase('label permutations within clusters')}); one-sided",
                              f"graded: p < {a}; block only: bound < {rule.equivalence_r}", _p(w.p_value),
                              bool(w.p_value < a and w.statistic > 0), bound=_finite(w.upper_bound),
                              margin=rule.equivalence_r))
    if evidence.cluster_level is not None:
        cl = evidence.cluster_level
        rows.append(Criterion("Routing between clusters follows output between clusters", "separates",
                              "Pearson r of between-cluster means of C_out and C_jac^spec", cl.r,
                              f"cluster identities permuted ({cl.n_permutations}); {cl.n_clusters} clusters, "
                              f"{cl.n_pairs} cluster pairs; one-sided", f"p < {a}", _p(cl.p_value),
                              bool(cl.p_value < a and cl.r > 0)))
    if evidence.noise_floor is not None:
        rows.append(noise_floor_criterion(evidence, rule))
    if evidence.raw_mantel is not None:
        rm, rc = evidence.raw_mantel, evidence.raw_contrast
        rows += [Criterion("Output similarity predicts raw routing similarity", "raw (reported)",
                           "Pearson r(C_out, C_jac)", rm.statistic,
                           f"studentized Mantel ({rm.null_phrase('KD-label permutations')})", f"p < {a}", _p(rm.p_value),
                           bool(rm.p_value < a), bound=_finite(rm.upper_bound), margin=rule.equivalence_r),
                 Criterion("Same-cluster KDs share raw routing", "raw (reported)",
                           "point-biserial r(C_jac, same cluster)", rc.r,
                           f"studentized same − cross contrast ({rc.test.null_phrase('cluster-label permutations')})",
                           f"p < {a}", _p(rc.test.p_value), bool(rc.test.p_value < a),
                           note=f"{rc.test.statistic:.2f} SD; same {rc.mean_same:.4g} vs cross {rc.mean_cross:.4g}",
                           bound=_finite(rc.r_bound), margin=rule.equivalence_r)]
    return tuple(rows)


def noise_floor_criterion(evidence: RoutingEvidence, rule: DecisionRule) -> Criterion:
    """The noise-floor row: the split-half reliability of C_jac^spec, against `min_reliability`."""
    nf = evidence.noise_floor
    return Criterion("KD-specific routing reproduces across control draws", "noise floor",
                     "split-half reliability of C_jac^spec (Spearman–Brown)", nf.reliability_jac,
                     f"two halves of the control draws ({nf.half_draws[0]} + {nf.half_draws[1]}); delete-one-KD "
                     "jackknife SE", f"unreliable: < {rule.min_reliability:g}", None,
                     bool(nf.reliability_jac >= rule.min_reliability),
                     note=f"half r {nf.half_r_jac:.4g} (SE {nf.half_r_jac_se:.2g}); C_out reliability "
                          f"{nf.reliability_out:.4g}; Mantel r corrected for attenuation {nf.corrected_r:.3f}")


def reported_criteria(evidence: RoutingEvidence, rule: DecisionRule, svd: SvdEvidence | None) -> tuple:
    """Rows shown beside the deciding ones: the seed's pair-level versions (on the raw C_jac, as the seed wrote
    them), the partial Mantel, the SVD."""
    a = rule.alpha
    c = evidence.raw_contrast or evidence.contrast
    m = evidence.raw_mantel or evidence.mantel_pearson
    rows = [
        Criterion("Same-cluster KDs share routing", "seed (reported)", "mean C_jac same − cross", c.difference,
                  "Wilcoxon rank-sum on pairs (anti-conservative: pairs share KDs)", f"p < {a}, same > cross",
                  _p(c.rank_sum_p), bool(c.rank_sum_p < a and c.difference > 0), note=f"AUC {c.auc:.3f}"),
        Criterion("Output similarity predicts routing similarity", "seed (reported)", "Pearson r(C_out, C_jac)",
                  m.statistic, "none (pair-level)", f"r > {rule.min_r}", None, bool(m.statistic > rule.min_r)),
    ]
    if evidence.partial_mantel is not None:
        pm = evidence.partial_mantel
        rows.append(Criterion("Routing adds to the encoder geometry", "reported", "partial Mantel r(C_jac, C_out | C_rep)",
                              pm.statistic, f"studentized partial Mantel ({pm.null_phrase('KD-label permutations')}); "
                              "not valid under a shared cause, never decides", f"p < {a}", _p(pm.p_value),
                              bool(pm.p_value < a and pm.statistic > 0)))
    if svd is not None:
        rows += [
            Criterion("SVD axes are biologically interpretable (seed's literal test)", "SVD (reported)",
                      "max FDR of axis-1 gene and KD enrichment", max(svd.seed_gene_fdr, svd.seed_kd_fdr),
                      "prerank GSEA of gene loadings and of KD scores (BH-FDR), any terms",
                      f"both FDR < {svd.fdr}", None, svd.seed_held,
                      note=f"genes: {svd.seed_gene_term}; KDs: {svd.seed_kd_term} (NES {svd.seed_kd_nes:+.2f})"),
            Criterion("SVD axes show the same biology on both sides", "SVD (reported)",
                      f"interpretable axes among the first {svd.n_axes}", float(svd.n_interpretable),
                      "one pathway enriched in the gene loadings and, at the high-score end, in the KD scores "
                      "(unit-norm Jacobians)", f"≥ 1 axis, FDR < {svd.fdr}", None, svd.n_interpretable > 0,
                      note=_axes_note(svd)),
            Criterion("Routing axes carry what output axes do not", "SVD (reported)",
                      "largest principal angle to ΔY's axes (cos)", svd.min_principal_cosine,
                      "gene loadings of the routing SVD vs the SVD of unit-norm ΔY", "an interpretable axis with "
                      f"overlap < {svd.overlap_threshold}", None, svd.n_beyond_output > 0,
                      note=f"{svd.n_beyond_output} interpretable routing axes outside ΔY's axes; ΔY's own SVD has "
                           f"{svd.n_output_interpretable} interpretable axes"),
        ]
    return tuple(rows)


def use_criteria(substitution: SubstitutionTest, interchange: InterchangeTest | None,
                 rule: DecisionRule) -> tuple[Criterion, ...]:
    """The interventions' rows: centroid substitution (decides whether the geometry is used) and interchange
    (reported)."""
    s, a, m = substitution, rule.alpha, rule.substitution_margin
    g = s.gain
    if g.n_clusters >= 2:
        support = ("used" if g.p_value < a and g.estimate >= m else "not used" if g.bound < m else "neither")
    else:
        support = "neither"
    rows = [Criterion("A cluster's shared embedding reproduces its KDs' responses", "decides (use)",
                      "mean cos(ΔY(cluster centroid), ΔY_k) − mean cos(ΔY(random-group centroid), ΔY_k)", g.estimate,
                      f"leave-one-out centroid substitution through the model's forward, {s.random_groups} random "
                      f"groups per KD; one-sided cluster sign-flip over {g.n_clusters} clusters; delete-one-cluster "
                      "jackknife bound (t)", f"used: gain ≥ {m:g}, p < {a}; not used: bound < {m:g}",
                      _p(g.p_value), support == "used", support,
                      f"{s.n_kds} KDs; cos {s.cosine:.3f} (random groups {s.random_cosine:.3f}); share reproduced "
                      f"{s.share:.3f} (random {s.random_share:.3f}); median size ratio {s.size_ratio:.2f}",
                      _finite(g.bound), m)]
    if interchange is not None:
        i = interchange
        rows.append(Criterion("Swapping the cluster-shared component moves the response to the other cluster",
                              "interventions (reported)", "interchange accuracy − random-subspace swap", i.gain.estimate,
                              f"projection on the span of {i.rank} cluster centroids swapped; one-sided cluster "
                              "sign-flip", f"p < {a}", _p(i.gain.p_value), bool(i.gain.p_value < a and i.gain.estimate > 0),
                              note=f"accuracy {i.accuracy:.2f} vs {i.null_accuracy:.2f} for a random subspace of the "
                                   f"same rank ({i.n_kds} KDs)"))
    return tuple(rows)


def use_answer(support: str) -> str:
    """`Verdict.use` from the substitution row's support ("neither" is "inconclusive")."""
    return support if support in ("used", "not used") else "inconclusive"


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
        use = use_answer(use_rows[0].supports)
    criteria += reported_criteria(evidence, rule, svd)
    d, s = evidence.decomposition, evidence.spread
    n = evidence.n_kds
    out_specific = (n - 1) / n * (1 - s.out_mean) if n > 1 else 0.0  # the same share for unit-norm ΔY
    if out_specific < rule.min_specific_share:
        return Verdict("degenerate", criteria, "C_out", use)
    if d.specific_share < rule.min_specific_share:
        return Verdict("global readout", criteria, "C_jac", use)
    supports = (mantel_row.supports, contrast_row.supports)
    if supports == ("Model B", "Model B"):
        call = "cluster circuits"
    elif supports == ("Model A", "Model A"):
        call = "global readout" if d.common_share >= rule.global_share else "per-KD"
    elif set(supports) == {"Model A", "Model B"}:
        call = "mixed"
    else:
        call = "inconclusive"
    nf = evidence.noise_floor
    if call in READS_SPECIFIC_STRUCTURE and nf is not None and nf.reliability_jac < rule.min_reliability:
        call = "unreliable"
    return Verdict(call, criteria, use=use)


def _axes_note(svd: SvdEvidence) -> str:
    """The interpretable routing axes, for the SVD row's note."""
    held = [a for a in svd.axes if a.interpretable(svd.fdr)]
    if not held:
        return "no axis shows one pathway on both sides"
    return "; ".join(f"axis {a.axis}: {a.term} (KD NES {a.kd_nes:+.2f}, genes {'up' if a.gene_nes > 0 else 'down'})"
                     for a in held)

"""The verdict: one decision rule over typed statistics; the call and the rows it rests on (the words are
`present.prose`'s).

Two criteria decide, each read three ways:

- *Output similarity predicts routing similarity* (studentized Mantel r of C_out vs C_jac): supports Model B when
  p < α and r clears the seed's threshold; supports Model A when equivalence is shown — the one-sided 95 % upper
  bound of r (r + z·jackknife SE) lies below the smallest effect of interest.
- *Same-cluster KDs share routing* (studentized cluster-label permutation of the same − cross difference of C_jac,
  in SDs of C_jac): supports Model B when p < α and the standardized difference clears its minimum; Model A when
  its upper bound lies below the smallest effect of interest.

Call: positive (Model B) when both support B; negative (Model A) when both support A; mixed when one supports B
and the other A; inconclusive otherwise. Before any of that, *degenerate routing*: when the Jacobians (or the
responses) of all KDs are nearly parallel (1 − mean off-diagonal C_jac below `min_dissimilarity`), every KD routes
(or responds) the same way, the spread of C_jac is numerical noise, and the call says so instead of reading it.
(A small *spread* alone is not degeneracy: KD-specific routing in G·H dimensions gives C_jac ≈ 0 ± 1/√(G·H).)

The SVD, the partial Mantel and the seed's pair-level tests are reported beside the deciding rows, labelled; they
never change the call (the partial Mantel is not valid under a shared cause; the SVD is descriptive).

The construct's limit: a per-KD lookup whose gate reads the KD's own embedding has J_k = w_k ⊗ p_k/‖p_k‖², so
C_jac = C_out ⊙ C_rep, and local Jacobians cannot tell it from shared routing when C_rep clusters like C_out.
Every positive call carries that caveat, with r(C_jac, C_out ⊙ C_rep) beside it.
"""

from __future__ import annotations

import numpy as np

from ..config import DecisionRule
from ..results import Criterion, RoutingEvidence, SvdEvidence, Verdict


def _support(significant: bool, large_enough: bool, equivalent: bool) -> str:
    if significant and large_enough:
        return "Model B"
    return "Model A" if equivalent else "neither"


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


_p = _finite


def deciding_criteria(evidence: RoutingEvidence, rule: DecisionRule) -> tuple[Criterion, Criterion]:
    """The two rows the call rests on, each with the model it supports."""
    m, c = evidence.mantel_pearson, evidence.contrast
    a = rule.alpha
    m_support = _support(m.p_value < a, m.statistic > rule.min_r, m.upper_bound < rule.equivalence_r)
    c_support = _support(c.test.p_value < a, c.test.statistic >= rule.min_contrast,
                         c.test.upper_bound < rule.equivalence_contrast)
    mantel_row = Criterion(
        "Output similarity predicts routing similarity", "decides", "Pearson r(C_out, C_jac)", m.statistic,
        f"studentized Mantel ({m.n_permutations} KD-label permutations); one-sided 95 % jackknife bound",
        f"B: r > {rule.min_r}, p < {a}; A: bound < {rule.equivalence_r}", _p(m.p_value), m_support == "Model B",
        m_support, f"95 % KD-bootstrap CI [{evidence.pearson_ci[0]:.3f}, {evidence.pearson_ci[1]:.3f}]; "
                   f"Spearman {evidence.mantel_spearman.statistic:.3f}", _finite(m.upper_bound), rule.equivalence_r)
    contrast_row = Criterion(
        "Same-cluster KDs share routing", "decides", "(mean C_jac same − cross) / SD(C_jac)", c.test.statistic,
        f"studentized cluster-label permutation ({c.test.n_permutations}); one-sided 95 % jackknife bound",
        f"B: ≥ {rule.min_contrast} SD, p < {a}; A: bound < {rule.equivalence_contrast} SD", _p(c.test.p_value),
        c_support == "Model B", c_support,
        f"same {c.mean_same:.3f} vs cross {c.mean_cross:.3f} (difference {c.difference:.3g}, SD {c.spread:.3g})",
        _finite(c.test.upper_bound), rule.equivalence_contrast)
    return mantel_row, contrast_row


def reported_criteria(evidence: RoutingEvidence, rule: DecisionRule, svd: SvdEvidence | None) -> tuple:
    """Rows shown beside the deciding ones: the seed's pair-level versions, the partial Mantel, the SVD."""
    a, c, m = rule.alpha, evidence.contrast, evidence.mantel_pearson
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
                              pm.statistic, f"studentized partial Mantel ({pm.n_permutations}); not valid under a "
                              "shared cause, never decides", f"p < {a}", _p(pm.p_value),
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


def decide(evidence: RoutingEvidence, rule: DecisionRule, svd: SvdEvidence | None = None) -> Verdict:
    """The call and its evidential basis, from the statistics alone (the pipeline, the known answers and the
    calibration all call this one function)."""
    mantel_row, contrast_row = deciding_criteria(evidence, rule)
    criteria = (mantel_row, contrast_row) + reported_criteria(evidence, rule, svd)
    s = evidence.spread
    if 1 - s.jac_mean < rule.min_dissimilarity:
        return Verdict("degenerate", criteria, "C_jac")
    if 1 - s.out_mean < rule.min_dissimilarity:
        return Verdict("degenerate", criteria, "C_out")
    supports = (mantel_row.supports, contrast_row.supports)
    if supports == ("Model B", "Model B"):
        call = "positive"
    elif supports == ("Model A", "Model A"):
        call = "negative"
    elif set(supports) == {"Model A", "Model B"}:
        call = "mixed"
    else:
        call = "inconclusive"
    return Verdict(call, criteria)


def _axes_note(svd: SvdEvidence) -> str:
    """The interpretable routing axes, for the SVD row's note."""
    held = [a for a in svd.axes if a.interpretable(svd.fdr)]
    if not held:
        return "no axis shows one pathway on both sides"
    return "; ".join(f"axis {a.axis}: {a.term} (KD NES {a.kd_nes:+.2f}, genes {'up' if a.gene_nes > 0 else 'down'})"
                     for a in held)

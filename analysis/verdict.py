"""Stage 6 — the verdict: one decision rule over typed statistics, with its evidential basis in words.

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

import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .formatting import p_phrase
from .routing import RoutingEvidence, SvdEvidence

CALLS = {
    "positive": "Model B (internalized circuits) — the transformer uses the encoder geometry",
    "negative": "Model A (statistical compression) — the encoder geometry is decorative",
    "mixed": "mixed — one deciding criterion supports Model B, the other Model A",
    "inconclusive": "inconclusive — the data neither show shared routing nor rule it out",
    "degenerate": "degenerate routing — every KD is routed (or responds) the same way; neither model can be read",
}
CAVEAT = ("A per-KD lookup whose gate reads each KD's own embedding gives C_jac = C_out ⊙ C_rep and the same "
          "positive call: local Jacobians cannot distinguish it from shared routing.")


@dataclass(frozen=True)
class DecisionRule:
    """The thresholds of the call (config [statistics]); effect sizes in the units the criteria state.

    min_r: r must exceed it for Model B (the seed's 0.3); equivalence_r: smallest effect of interest for r (upper
    bound below it supports Model A); min_contrast / equivalence_contrast: the same for the same − cross difference
    of C_jac in SDs of C_jac; min_dissimilarity: SD of off-diagonal C_jac or C_out below which routing is degenerate.
    """

    alpha: float = 0.05
    min_r: float = 0.3
    equivalence_r: float = 0.1
    min_contrast: float = 0.5
    equivalence_contrast: float = 0.5
    min_dissimilarity: float = 0.01

    @classmethod
    def from_config(cls, config) -> "DecisionRule":
        return cls(config.alpha, config.seed_r_threshold, config.equivalence_r, config.min_contrast,
                   config.equivalence_contrast, config.min_dissimilarity)


@dataclass(frozen=True)
class Criterion:
    """One row of the verdict table. supports: "Model B", "Model A" or "neither" for deciding rows, "" otherwise."""

    name: str
    family: str  # "decides", "seed (reported)", "SVD (reported)", "reported"
    statistic: str
    value: float
    test: str
    threshold: str
    p_value: float | None
    held: bool
    supports: str = ""
    note: str = ""
    bound: float | None = None  # one-sided 95 % upper bound of `value` (deciding rows)
    margin: float | None = None  # the smallest effect of interest that bound is compared with


@dataclass(frozen=True)
class Verdict:
    call: str  # a key of CALLS
    reason: str
    criteria: tuple
    caveat: str = ""

    @property
    def meaning(self) -> str:
        return CALLS[self.call]

    @property
    def deciding(self) -> tuple:
        return tuple(c for c in self.criteria if c.family == "decides")

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(c) for c in self.criteria])

    def to_dict(self) -> dict:
        return {"call": self.call, "meaning": self.meaning, "reason": self.reason, "caveat": self.caveat,
                "criteria": [asdict(c) for c in self.criteria]}

    @classmethod
    def from_dict(cls, data: dict) -> "Verdict":
        return cls(data["call"], data["reason"], tuple(Criterion(**c) for c in data["criteria"]), data["caveat"])


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
                      note=svd.describe_axes()),
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
    if 1 - s.jac_mean < rule.min_dissimilarity or 1 - s.out_mean < rule.min_dissimilarity:
        which, mean, sd = ("C_jac", s.jac_mean, s.jac_sd) if 1 - s.jac_mean < rule.min_dissimilarity else \
            ("C_out", s.out_mean, s.out_sd)
        reason = (f"{which} is nearly 1 for every pair of KDs (mean {mean:.5f}, SD {sd:.2g}; 1 − mean below the floor "
                  f"{rule.min_dissimilarity}): every KD is {'routed' if which == 'C_jac' else 'answered'} the same way, "
                  "so correlations and contrasts computed on it describe noise and neither model is read.")
        return Verdict("degenerate", reason, criteria)
    supports = (mantel_row.supports, contrast_row.supports)
    if supports == ("Model B", "Model B"):
        call = "positive"
    elif supports == ("Model A", "Model A"):
        call = "negative"
    elif set(supports) == {"Model A", "Model B"}:
        call = "mixed"
    else:
        call = "inconclusive"
    reason = "; ".join(_explain(row, evidence.mantel_pearson.n_permutations) for row in (mantel_row, contrast_row)) + "."
    caveat = ""
    if call == "positive":
        caveat = CAVEAT + (f" Here r(C_jac, C_out ⊙ C_rep) = {evidence.keyed_lookup_r:.2f}."
                           if evidence.keyed_lookup_r is not None else "")
    return Verdict(call, reason, criteria, caveat)


def _explain(row: Criterion, n_permutations: int) -> str:
    p = "p undefined" if row.p_value is None else p_phrase(row.p_value, n_permutations)
    name = row.name[0].lower() + row.name[1:]
    if row.supports == "Model B":
        return f"{name}: shown ({row.statistic} = {row.value:.2f}, above its minimum; {p})"
    if row.supports == "Model A":
        return (f"{name}: ruled out (one-sided 95 % upper bound {row.bound:.3g} below the smallest effect of interest "
                f"{row.margin})")
    return f"{name}: neither shown nor ruled out ({row.statistic} = {row.value:.2f}; {p})"


# ---------------------------------------------------------------- prior-work table
GROUPS = {
    "ribosomal": r"^RP[LS]\d",
    "mitoribosomal": r"^MRP[LS]\d",
    "TRAPP": r"^TRAPPC\d",
    "ER/secretory": r"^(TRAPPC\d|SEC\d|COP[ABEGZ])",
}


def kd_group(kd_names, pattern: str) -> np.ndarray:
    return np.array([bool(re.match(pattern, k)) for k in kd_names])


def ordinal(value: float) -> str:
    """93 -> '93rd', 11 -> '11th'."""
    n = int(round(value))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def pair_percentile(similarity: np.ndarray, value: float) -> float:
    """Percentile of `value` among all off-diagonal pairs of `similarity`."""
    i, j = np.triu_indices(similarity.shape[0], k=1)
    return float(100 * np.mean(similarity[i, j] <= value))


def _group_mean(similarity: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    block = similarity[np.ix_(a, b)]
    if a is b or np.array_equal(a, b):
        n = block.shape[0]
        return float(block[~np.eye(n, dtype=bool)].mean()) if n > 1 else float("nan")
    return float(block.mean())


def prior_work(kd_names, c_out: np.ndarray, c_jac: np.ndarray, c_rep: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """The seed's 'Connection to prior work' rows with what this run found."""
    kd_names = list(kd_names)
    index = {k: i for i, k in enumerate(kd_names)}

    def pair(a, b):
        if a not in index or b not in index:
            return f"{a} or {b} not among this run's KDs"
        i, j = index[a], index[b]
        rep_nn = kd_names[int(np.argsort(-c_rep[i])[1])]
        return (f"{a}'s nearest KD in pert_repr: {rep_nn}. {a}–{b}: C_rep {c_rep[i, j]:.2f} "
                f"({ordinal(pair_percentile(c_rep, c_rep[i, j]))} pct), C_out {c_out[i, j]:.2f} "
                f"({ordinal(pair_percentile(c_out, c_out[i, j]))} pct), C_jac {c_jac[i, j]:.2f} "
                f"({ordinal(pair_percentile(c_jac, c_jac[i, j]))} pct)")

    def cohesion(name):
        members = kd_group(kd_names, GROUPS[name])
        if members.sum() < 2:
            return f"{name}: fewer than 2 KDs in this run"
        modal = np.bincount(labels[members]).max() / members.sum()
        jac = _group_mean(c_jac, members, members)
        return (f"{name} KDs ({members.sum()}): {modal:.0%} in one output cluster; mean within-group C_jac {jac:.2f} "
                f"({ordinal(pair_percentile(c_jac, jac))} pct)")

    ribo = kd_group(kd_names, GROUPS["ribosomal"])
    if "MYC" in index and ribo.any():
        i = index["MYC"]
        m = float(c_jac[i, ribo].mean())
        myc = (f"MYC vs ribosomal KDs: mean C_jac {m:.2f} ({ordinal(pair_percentile(c_jac, m))} pct), "
               f"mean C_out {c_out[i, ribo].mean():.2f}")
    else:
        myc = "MYC or ribosomal KDs not among this run's KDs"
    rows = [
        ("NB02", "pert_encoder clusters by pathway (TRAPPC3's nearest neighbour is TRAPPC5; ribosomal island)",
         "Are those clusters functionally active, not just geometric?", pair("TRAPPC3", "TRAPPC5")),
        ("NB01", "SAE feature clusters: mitoribosome PASS, ER/secretory FAIL",
         "Do gene-output clusters match? Does routing also differ?", cohesion("mitoribosomal") + "; " + cohesion("ER/secretory")),
        ("NB08", "MYC generalizes (r = 0.355), TRAPPC3 does not (r = 0.001)",
         "Do MYC and ribosomal KDs share routing directions?", myc),
        ("NB04", "in-silico KO mean cross-cell-line r = 0.057",
         "Input routing is not backbone-level; does pert routing compensate?",
         # Answered across lines by the `consistency` stage (Results.prior_work); one line cannot answer it.
         "not measured: one cell line analysed (list two or more in [data] cell_line)"),
    ]
    return pd.DataFrame(rows, columns=["prior", "finding", "question", "this_run"])

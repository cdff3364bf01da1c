"""Stage 6 — the verdict: each criterion of the seed beside its dependence-aware counterpart, and the call.

Call: positive (Model B, internalized circuits) when both dependence-aware core criteria
hold (Mantel r > threshold with p < α; same-cluster routing higher under cluster-label
permutation, p < α); negative (Model A, statistical compression) when neither holds;
mixed otherwise. SVD interpretability and the partial Mantel are reported beside them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

CALLS = {
    "positive": "Model B (internalized circuits): the transformer uses the encoder geometry",
    "negative": "Model A (statistical compression): the encoder geometry is decorative",
    "mixed": "mixed: some routing criteria hold, others do not",
}


@dataclass(frozen=True)
class Criterion:
    name: str
    family: str  # "seed" or "dependence-aware"
    statistic: str
    value: float
    test: str
    threshold: str
    p_value: float | None
    held: bool
    note: str = ""


@dataclass(frozen=True)
class Verdict:
    call: str  # "positive" | "negative" | "mixed"
    criteria: tuple

    @property
    def meaning(self) -> str:
        return CALLS[self.call]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(c) for c in self.criteria])

    def to_dict(self) -> dict:
        return {"call": self.call, "meaning": self.meaning, "criteria": [asdict(c) for c in self.criteria]}

    @classmethod
    def from_dict(cls, data: dict) -> "Verdict":
        return cls(data["call"], tuple(Criterion(**c) for c in data["criteria"]))


def decide(stats: dict, alpha: float, r_threshold: float, fdr: float) -> Verdict:
    """Build the criteria table from the routing statistics (see `pipeline.part3`) and make the call."""
    contrast, mantel_p, mantel_s = stats["contrast"], stats["mantel_pearson"], stats["mantel_spearman"]
    partial, svd = stats["partial_mantel"], stats["svd_enrichment"]
    ci = stats["pearson_ci"]
    diff = contrast["difference"]
    svd_held = bool(svd["gene_fdr"] < fdr and svd["kd_fdr"] < fdr)
    svd_value = float(max(svd["gene_fdr"], svd["kd_fdr"]))
    svd_note = f"axis 1 genes: {svd['gene_term']}; KDs: {svd['kd_term']}"
    criteria = (
        Criterion("Same-cluster KDs share routing", "seed", "mean C_jac same − cross", diff,
                  "Wilcoxon rank-sum on pairs (anti-conservative: pairs share KDs)", f"p < {alpha}, same > cross",
                  contrast["rank_sum_p"], bool(contrast["rank_sum_p"] < alpha and diff > 0), f"AUC {contrast['auc']:.3f}"),
        Criterion("Same-cluster KDs share routing", "dependence-aware", "mean C_jac same − cross", diff,
                  f"cluster-label permutation ({contrast['n_permutations']} permutations)", f"p < {alpha}, same > cross",
                  contrast["permutation_p"], bool(contrast["permutation_p"] < alpha and diff > 0), f"AUC {contrast['auc']:.3f}"),
        Criterion("Output similarity predicts routing similarity", "seed", "Pearson r(C_out, C_jac)", stats["pearson_r"],
                  "none (pair-level)", f"r > {r_threshold}", None, bool(stats["pearson_r"] > r_threshold)),
        Criterion("Output similarity predicts routing similarity", "dependence-aware", "Pearson r(C_out, C_jac)",
                  stats["pearson_r"], f"Mantel permutation ({mantel_p['n_permutations']}), KD bootstrap CI",
                  f"r > {r_threshold}, p < {alpha}", mantel_p["p_value"],
                  bool(stats["pearson_r"] > r_threshold and mantel_p["p_value"] < alpha),
                  f"95% CI [{ci[0]:.3f}, {ci[1]:.3f}]; Spearman {mantel_s['statistic']:.3f} (p {mantel_s['p_value']:.2g})"),
        Criterion("SVD axes are biologically interpretable", "seed", "max FDR of axis-1 gene and KD enrichment", svd_value,
                  "prerank GSEA of gene loadings and of KD scores (BH-FDR)", f"both FDR < {fdr}", None, svd_held, svd_note),
        Criterion("Routing adds to the encoder geometry", "dependence-aware", "partial Mantel r(C_jac, C_out | C_rep)",
                  partial["statistic"], f"partial Mantel permutation ({partial['n_permutations']})", f"p < {alpha}",
                  partial["p_value"], bool(partial["p_value"] < alpha and partial["statistic"] > 0)),
    )
    core = [c.held for c in criteria if c.family == "dependence-aware"][:2]
    call = "positive" if all(core) else "negative" if not any(core) else "mixed"
    return Verdict(call, criteria)


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


def prior_work(kd_names, c_out: np.ndarray, c_jac: np.ndarray, c_rep: np.ndarray, labels: np.ndarray,
               stats: dict, linearity_median: float) -> pd.DataFrame:
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
         f"Mantel r(C_out, C_jac) = {stats['pearson_r']:.2f} (p {stats['mantel_pearson']['p_value']:.2g}); "
         f"median share of ΔY explained by J·Δp = {linearity_median:.2f}"),
    ]
    return pd.DataFrame(rows, columns=["prior", "finding", "question", "this_run"])

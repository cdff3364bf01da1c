"""Every sentence the package writes about a result: the call's meaning, its reason and caveat, the comparison across
cell lines, the prior-work rows. Words are made from the stored records when shown, never stored (a change of
wording re-renders; it does not recompute)."""

from __future__ import annotations

import pandas as pd

from ..config import DecisionRule
from ..results import AcrossResult, Criterion, PairedDifference, Results, RoutingResult
from .formatting import p_phrase

CALL_MEANINGS = {
    "positive": "Model B (internalized circuits) — the transformer uses the encoder geometry",
    "negative": "Model A (statistical compression) — the encoder geometry is decorative",
    "mixed": "mixed — one deciding criterion supports Model B, the other Model A",
    "inconclusive": "inconclusive — the data neither show shared routing nor rule it out",
    "degenerate": "degenerate routing — every KD is routed (or responds) the same way; neither model can be read",
}
CAVEAT = ("A per-KD lookup that switches on when it reads each KD's own embedding gives C_jac = C_out ⊙ C_rep and the same "
          "positive call: local Jacobians cannot distinguish it from shared routing.")
# How a PairedDifference's direction reads, after "routing" (CLI) or "a KD's own routing was" (report).
DIRECTIONS = {"more": "more consistent between the lines than output",
              "less": "less consistent between the lines than output",
              "no difference": "neither more nor less consistent between the lines than output"}


# ---------------------------------------------------------------- the verdict
def meaning(routing: RoutingResult) -> str:
    return CALL_MEANINGS[routing.verdict.call]


def reason(routing: RoutingResult, rule: DecisionRule) -> str:
    """Why the call is what it is, from its deciding rows (or the degenerate matrix's spread against the rule's
    floor)."""
    verdict, evidence = routing.verdict, routing.evidence
    if verdict.call == "degenerate":
        s = evidence.spread
        which = verdict.degenerate_matrix
        mean, sd = (s.jac_mean, s.jac_sd) if which == "C_jac" else (s.out_mean, s.out_sd)
        return (f"{which} is nearly 1 for every pair of KDs (mean {mean:.5f}, SD {sd:.2g}; 1 − mean below the floor "
                f"{rule.min_dissimilarity}): every KD is {'routed' if which == 'C_jac' else 'answered'} the same way, so "
                "correlations and contrasts computed on it describe noise and neither model is read.")
    return "; ".join(_explain(row, evidence.mantel_pearson.n_permutations) for row in verdict.deciding) + "."


def caveat(routing: RoutingResult) -> str:
    """The construct's blind spot, said with every positive call ("" otherwise)."""
    if routing.verdict.call != "positive":
        return ""
    r = routing.evidence.keyed_lookup_r
    return CAVEAT + (f" Here r(C_jac, C_out ⊙ C_rep) = {r:.2f}." if r is not None else "")


def _explain(row: Criterion, n_permutations: int) -> str:
    p = "p undefined" if row.p_value is None else p_phrase(row.p_value, n_permutations)
    name = row.name[0].lower() + row.name[1:]
    if row.supports == "Model B":
        return f"{name}: shown ({row.statistic} = {row.value:.2f}, above its minimum; {p})"
    if row.supports == "Model A":
        return (f"{name}: ruled out (one-sided 95% upper bound {row.bound:.3g} below the smallest effect of interest "
                f"{row.margin})")
    return f"{name}: neither shown nor ruled out ({row.statistic} = {row.value:.2f}; {p})"


# ---------------------------------------------------------------- across cell lines
def paired_p(test: PairedDifference) -> str:
    """'p = 0.016' (exact sign-flip) or 'p ≤ 1e-4' (sampled patterns at their floor)."""
    return p_phrase(test.p_value, None if test.exact else test.n_sign_patterns)


def describe_pair(table: pd.DataFrame, tests: tuple) -> str:
    """One sentence on one pair of lines: median cosines with their baselines, and each paired comparison."""
    parts = []
    for test in tests:
        kind = "exact" if test.exact else f"{test.n_sign_patterns:,} sampled patterns"
        parts.append(f"{test.measure} cos J − cos ΔY = {test.estimate:+.2f} ({test.confidence:.0%} cluster-bootstrap CI "
                     f"{test.ci_low:+.2f} to {test.ci_high:+.2f}; sign-flip over {test.n_units} clusters, {kind}, "
                     f"{paired_p(test)}): routing {DIRECTIONS[test.direction]}")
    first = tests[0]
    return (f"{first.line_a} vs {first.line_b} ({first.n_kds} KDs): median cos ΔY {table['cos_output'].median():.2f} "
            f"(other KDs {table['baseline_output'].median():.2f}), median cos J {table['cos_jacobian'].median():.2f} "
            f"(other KDs {table['baseline_jacobian'].median():.2f}); " + "; ".join(parts))


def describe_across(across: AcrossResult) -> str:
    """Every pair of lines, one sentence each."""
    return "; ".join(describe_pair(across.table[(across.table["line_a"] == a) & (across.table["line_b"] == b)],
                                   across.pair_tests(a, b)) for a, b in across.pairs)


# ---------------------------------------------------------------- prior work
def ordinal(value: float) -> str:
    """93 -> '93rd', 11 -> '11th'."""
    n = int(round(value))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _pair_text(numbers: dict) -> str:
    a, b = numbers["pair_names"]
    pair = numbers["pair"]
    if pair is None:
        return f"{a} or {b} not among this run's KDs"
    return (f"{a}'s nearest KD in pert_repr: {pair['rep_nearest']}. {a}–{b}: C_rep {pair['c_rep']:.2f} "
            f"({ordinal(pair['c_rep_percentile'])} pct), C_out {pair['c_out']:.2f} "
            f"({ordinal(pair['c_out_percentile'])} pct), C_jac {pair['c_jac']:.2f} ({ordinal(pair['c_jac_percentile'])} pct)")


def _family_text(name: str, family: dict) -> str:
    if "mean_c_jac" not in family:
        return f"{name}: fewer than 2 KDs in this run"
    return (f"{name} KDs ({family['n_kds']}): {family['modal_cluster_share']:.0%} in one output cluster; mean "
            f"within-group C_jac {family['mean_c_jac']:.2f} ({ordinal(family['mean_c_jac_percentile'])} pct)")


def _hub_text(numbers: dict) -> str:
    hub = numbers["hub"]
    if hub is None:
        return f"{numbers['hub_name']} or ribosomal KDs not among this run's KDs"
    return (f"{numbers['hub_name']} vs ribosomal KDs: mean C_jac {hub['mean_c_jac']:.2f} "
            f"({ordinal(hub['mean_c_jac_percentile'])} pct), mean C_out {hub['mean_c_out']:.2f}")


def prior_work_table(results: Results) -> pd.DataFrame:
    """The original plan's "Connection to prior work" rows with what this run found (prior, finding, question,
    this_run); NB04 is answered across cell lines when several were analysed."""
    numbers = results.routing.prior_work
    nb04 = (describe_across(results.across) if results.across is not None
            else "not measured: one cell line analysed (list two or more in [data] cell_line)")
    rows = [
        ("NB02", "pert_encoder clusters by pathway (TRAPPC3's nearest neighbour is TRAPPC5; ribosomal island)",
         "Are those clusters functionally active, not just geometric?", _pair_text(numbers)),
        ("NB01", "sparse-autoencoder (SAE) feature clusters: mitoribosome PASS, ER/secretory FAIL",
         "Do gene-output clusters match? Does routing also differ?",
         "; ".join(_family_text(name, family) for name, family in numbers["families"].items())),
        ("NB08", "MYC generalizes (r = 0.355), TRAPPC3 does not (r = 0.001)",
         "Do MYC and ribosomal KDs share routing directions?", _hub_text(numbers)),
        ("NB04", "in-silico KO mean cross-cell-line r = 0.057",
         "Input routing is not backbone-level; does pert routing compensate?", nb04),
    ]
    return pd.DataFrame(rows, columns=["prior", "finding", "question", "this_run"])

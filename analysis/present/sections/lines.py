"""The across-cell-lines section: its prose (per-line calls, the paired comparison of routing and output
consistency, the sign flip's floor), the lines table and the demo's planted sharing."""

from __future__ import annotations

import pandas as pd

from ...results import PairedDifference, Results
from .. import prose
from ..formatting import Md, fmt, fmt_p, markdown_table, typeset
from .methods import SINGLE_LINE, lines_phrase


def across_sentence(results: Results) -> str:
    """Per pair of lines, routing against output consistency: the KD-specific comparison (the answer), then the raw
    one (abstract, section text)."""
    parts = []
    for a, b in results.across.pairs:
        specific, raw = results.across.pair_tests(a, b)
        parts.append(f"Between {a} and {b} ({specific.n_kds} KDs), a KD's own routing was "
                     f"{prose.DIRECTIONS[specific.direction]} ({_paired(specific)}; {_paired(raw)}).")
    return " ".join(parts)


def _paired(test: PairedDifference) -> str:
    return (f"{prose.MEASURES[test.measure]} cos J − cos ΔY = {fmt(test.estimate)}, 95% CI "
            f"{fmt(test.ci_low)} to {fmt(test.ci_high)}, cluster sign-flip {prose.paired_p(test)}")


def across_text(results: Results) -> Md:
    """The 'Across cell lines' section's prose: what was compared, per-line calls, and the paired comparison."""
    if results.across is None:
        return Md(f"One cell line was analysed ({lines_phrase(results)}). Listing two or more lines in "
                  "`[data] cell_line` analyses each on its own control cells with the same model and compares each "
                  "KD's output and routing between them (the original plan's NB04 question); with one line the figure below stays empty.")
    table = results.across.table
    calls = "; ".join(f"{line.cell_line}: **{line.routing.verdict.call}** ({len(line.effects.responses.kd_names)} KDs, "
                      f"r = {fmt(line.routing.evidence.mantel_pearson.statistic)}, contrast "
                      f"{fmt(line.routing.evidence.contrast.test.statistic)} SD)" for line in results.lines)
    medians = "; ".join(
        f"{a} vs {b}: median cos ΔY {fmt(frame['cos_output'].median())} against {fmt(frame['baseline_output'].median())} "
        f"with the other KDs, median cos J {fmt(frame['cos_jacobian'].median())} against "
        f"{fmt(frame['baseline_jacobian'].median())}; KD-specific, median cos ΔY {fmt(frame['specific_output'].median())}, "
        f"cos J {fmt(frame['specific_jacobian'].median())}"
        for (a, b), frame in table.groupby(["line_a", "line_b"], sort=False))
    return Md(typeset(f"The same model was analysed on each line's own control cells (every stage per line; the sections above "
              f"show {results.lines[0].cell_line}, the primary line). Per line, the call and its two deciding statistics: "
              f"{calls}. For every KD analysed in both lines, the cosine of its ΔY between the lines measures whether "
              f"the model predicts the same response there, and the cosine of its flattened Jacobian whether it routes "
              f"the KD through the same directions. A component shared by all KDs (large for Jacobians: mean C_jac "
              f"{fmt(results.routing.evidence.spread.jac_mean)} within {results.lines[0].cell_line}) makes a KD's raw "
              f"cosine high with every KD of the other line, so each side is read on its KD-specific part — each unit-norm "
              f"ΔY or J less its projection on its own line's common direction, the split the routing call reads — "
              f"whose cosine between the lines is 1 for a KD identical in both, about 0 for unrelated ones, and the same "
              f"scale for ΔY and J: a model whose routing and outputs are both kept across lines shows no difference "
              f"({medians}). {across_sentence(results)} KDs of one output cluster are not independent, "
              f"so the units of the sign-flip test and of the bootstrap interval are the primary line's output "
              f"clusters (@tbl-tests){sign_flip_floor(results)}."))


def sign_flip_floor(results: Results) -> str:
    """With few clusters an exact sign flip has a floor: 2 of the 2^n patterns are at least as extreme (two-sided)."""
    floors = {(test.n_units, test.floor) for test in results.across.tests if test.exact}
    return "".join(f"; with {n} clusters the smallest p an exact two-sided sign flip can give is 2/2^{n} = "
                   f"{fmt_p(floor)}" for n, floor in sorted(floors))


def _ari(a: pd.Series, b: pd.Series) -> str:
    """Adjusted Rand index of two labellings over the KDs both have."""
    from sklearn.metrics import adjusted_rand_score

    both = a.index.intersection(b.index)
    return f"{fmt(adjusted_rand_score(a[both].astype(str), b[both].astype(str)))} ({len(both)} KDs)"


def lines_table(results: Results, planted: pd.DataFrame | None = None) -> Md:
    """Per analysed line: KDs, clusters and the call; its output clusters against the primary line's (ARI over the KDs
    analysed in both) and, for the demo, against the planted modules (`planted`: kd, module, as
    `datasets.demo.load_truth` gives them; no-effect KDs are a module of their own)."""
    primary = results.lines[0].effects.kd_table.set_index("kd")["cluster"]
    modules = planted.set_index("kd")["module"] if planted is not None else None
    rows = []
    for line in results.lines:
        clusters = line.effects.kd_table.set_index("kd")["cluster"]
        ev = line.routing.evidence
        rows.append({"Line": line.cell_line or SINGLE_LINE, "KDs": f"{len(clusters):,}",
                     "Clusters (+ weak group)": f"{int(clusters.max())}",
                     "Call (r; contrast)": f"{line.routing.verdict.call} ({fmt(ev.mantel_pearson.statistic)}; "
                                           f"{fmt(ev.contrast.test.statistic)} SD)",
                     f"ARI with {results.lines[0].cell_line or 'the primary line'}": _ari(clusters, primary),
                     "ARI with planted modules": _ari(clusters, modules) if modules is not None else "— (not a demo)"})
    return markdown_table(pd.DataFrame(rows), [10, 7, 10, 20, 15, 15], "lrrlll")


def planted_sharing_table(results: Results, planted: pd.DataFrame | None = None) -> Md:
    """The demo's planted sharing of each module's response between the lines against what the model shows: per
    sharing level, the planted cosine of ΔY between the lines, the model's raw and KD-specific cosines of ΔY and J
    (medians) and the mean KD-specific difference (0 where routing and output are kept alike: a module planted 100 %
    shared reads consistent when it is near 0 or above).
    planted: kd, module, sharing, true_cosine, as `datasets.demo.load_line_truth` gives them (None: not a demo)."""
    if results.across is None or planted is None:
        note = "one cell line analysed" if results.across is None else "not a demo run: no planted truth"
        return markdown_table(pd.DataFrame({"Planted sharing": ["—"], "Note": [note]}), [10, 40])
    table = results.across.table.merge(planted.dropna(subset=["sharing"]), on="kd")
    specific = prose.MEASURES["specific"]
    rows = []
    for sharing, group in sorted(table.groupby("sharing"), key=lambda item: -item[0]):
        rows.append({"Planted sharing (modules)": f"{100 * sharing:.0f}% ({', '.join(sorted(group['module'].unique()))})",
                     "KDs": f"{len(group)}", "Planted cos ΔY": fmt(group["true_cosine"].median()),
                     f"Model cos ΔY, raw / {specific}": f"{fmt(group['cos_output'].median())} / "
                                                        f"{fmt(group['specific_output'].median())}",
                     f"Model cos J, raw / {specific}": f"{fmt(group['cos_jacobian'].median())} / "
                                                       f"{fmt(group['specific_jacobian'].median())}",
                     f"{specific} cos J − cos ΔY (mean)": fmt(group["difference"].mean())})
    return markdown_table(pd.DataFrame(rows), [30, 6, 10, 14, 14, 14], "lrrrrr")

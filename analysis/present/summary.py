"""What the command line prints after a run: the cluster table with top enrichments, then the verdict with its
criteria, the comparison across lines, and where results landed."""

from __future__ import annotations

import numpy as np

from ..results import Results
from . import prose
from .formatting import p_phrase, top_terms
from .quality import not_learned
from .quality import summary_line as quality_line
from .wording import FAMILY_LABELS, p_floor, words


def summary_lines(results: Results) -> list[str]:
    """The CLI's summary, one string per line."""
    effects, routing = results.effects, results.routing
    top_ora = top_terms(effects.ora).set_index("query")
    top_gsea = top_terms(effects.gsea).set_index("query")
    lines = [f"Effects: {len(effects.labels)} KDs, {int(effects.labels.max())} clusters (+ weak-effect group 0), "
             f"bootstrap ARI median {np.median(effects.bootstrap_ari):.2f}; draw-to-draw cosine median "
             f"{effects.kd_table['draw_cosine'].median():.3f}", ""]
    header = f"{'cluster':>7} {'KDs':>4}  {'top KD-target term (FDR)':<58} top response term (FDR)"
    lines += [header, "-" * len(header)]
    for cluster, members in effects.kd_table.groupby("cluster"):
        q = f"cluster {cluster}"
        ora = f"{top_ora.loc[q, 'term'][:48]} ({top_ora.loc[q, 'fdr']:.1e})" if q in top_ora.index else "—"
        gsea = f"{top_gsea.loc[q, 'term'][:48]} ({top_gsea.loc[q, 'fdr']:.1e})" if q in top_gsea.index else "—"
        lines.append(f"{cluster:>7} {len(members):>4}  {ora:<58} {gsea}")
    check = routing.autograd_check
    lines += ["", f"Jacobians: {len(effects.labels)} of {len(effects.responses.gene_names)} × "
              f"{effects.responses.pert_repr.shape[1]} in {routing.seconds['jacobians']:.0f} s; {check['kd']} against "
              f"reverse mode: relative error {check['relative_error']:.1e}; median share of ΔY explained by J·Δp "
              f"{routing.first_order['explained'].median():.2f}"]
    intervened = results.interventions
    if intervened is not None:
        draws = results.config.n_draws
        lines += ["", f"Interventions: {intervened.n_sets // draws:,} substituted representations × {draws} control "
                      f"draws (forward passes only) in {intervened.seconds:.0f} s"]
    if results.steering is not None:
        radii = ", ".join(f"axis {a}: {r:g}" for a, r in enumerate(results.steering.trust_radius, 1))
        lines.append(f"Steering along the routing axes: first-order prediction within "
                     f"{results.steering.tolerance:g} up to (median KD offsets) {radii}")
    lines += ["", quality_line(results)]
    lines += ["", f"Verdict: {routing.verdict.call.upper()} — {prose.meaning(routing)}",
              f"  Why: {prose.reason(routing)}"]
    if not_learned(results):
        lines.append(f"  Model: {not_learned(results)}")
    if routing.verdict.use:
        lines += [f"Geometry: {routing.verdict.use.upper()} — {prose.use_meaning(routing)}",
                  f"  Why: {prose.use_reason(intervened, routing.verdict.use)}"]
    if prose.synthesis(routing):
        lines.append(f"Together: {prose.synthesis(routing)}.")
    if prose.caveat(routing, intervened):
        lines.append(f"  Caveat: {prose.caveat(routing, intervened)}")
    if routing.depth:
        lines.append(f"By depth: {prose.depth_text(routing)}.")
    lines.append("")
    for c in routing.verdict.criteria:
        p = "" if c.p_value is None else ", " + p_phrase(c.p_value, p_floor(c))
        basis = f" → {c.supports}" if c.supports else ""
        said = words(c)
        lines.append(f"  [{'held' if c.held else 'not held'}] ({FAMILY_LABELS[c.family]}) {said.name}: "
                     f"{said.statistic} = {c.value:.3g}{p}{basis}; threshold {said.threshold}")
    if results.across is not None:
        lines += ["", "Across cell lines (the lines above: " + results.lines[0].cell_line + ")"]
        lines += [f"  {line.cell_line}: {line.routing.verdict.call.upper()}"
                  f"{'; geometry ' + line.routing.verdict.use if line.routing.verdict.use else ''} "
                  f"(r = {line.routing.evidence.mantel_pearson.statistic:.2f}, "
                  f"contrast {line.routing.evidence.contrast.test.statistic:.2f} SD)" for line in results.lines]
        lines.append(f"  {prose.describe_across(results.across)}")
    lines.append("\nResults: " + ", ".join(f"{k} → {v}" for k, v in results.stage_paths.items()))
    return lines

"""Text and tables for the Quarto report, generated from `analysis.results.Results`.

The article (`report/index.qmd`) types no result by hand: every number in its prose comes
from `numbers(results)` through inline expressions, every table from a `*_table` function
here, and the abstract's verdict sentence from `abstract(results)`. Nothing here computes a
statistic; it formats what the pipeline stored.

Charts render through `plots.enable_report_rendering()` (called by `load`): for the HTML format
the interactive chart as raw HTML in Markdown (Vega's JavaScript inlined once, one container
id per chart, no `text/html` output and so no CDN scripts); for the typst PDF a PNG sized to
the text column.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from ..config import GENESETS_DIR
from ..results import PairedDifference, Results
from . import prose
from .formatting import Md, breakable, fmt, fmt_p, library_short, p_phrase, studentized_p, top_terms


# ---------------------------------------------------------------- formatting
def config_relative(results: Results, path: str | Path) -> str:
    """`path` as the config file would name it: relative to the config's folder, the same on every machine."""
    base = results.config.source.parent if results.config.source else Path.cwd()
    return os.path.relpath(path, base)


def project_path(results: Results, path: str | Path) -> str:
    """`path` relative to the Quarto project (or working) folder when it lies inside, else as the config names it:
    no '../' climbing out of the rendered tree and no machine's absolute path."""
    root = os.environ.get("QUARTO_PROJECT_ROOT") or os.getcwd()
    relative = os.path.relpath(path, root)
    return config_relative(results, path) if relative.startswith("..") else relative


def config_file(results: Results) -> str:
    """The config file relative to the Quarto project (or working) folder; absolute when it lies outside."""
    if results.config.source is None:
        return "(built in code, no file)"
    root = os.environ.get("QUARTO_PROJECT_ROOT") or os.getcwd()
    relative = os.path.relpath(results.config.source, root)
    return str(results.config.source) if relative.startswith("..") else relative


# Symbols the analysis writes with underscores (C_jac, J_k, ΔY_k, p_ctrl) and 2^16 powers: Markdown sub- and
# superscripts in the report.
SYMBOL = re.compile(r"(?<![A-Za-z])(C|J|Y|p|w)_(out|jac|rep|k|ctrl)(\^spec)?(?![A-Za-z])")
POWER = re.compile(r"\b(\d+)\^(\d+)\b")
# The statistics call the original analysis plan "the seed"; a reader would take that for a random seed.
SEED_PLAN = re.compile(r"\bseed(?='s\b| \(reported\))")
CI_BRACKETS = re.compile(r"CI \[([^,\]]+), ([^\]]+)\]")
MINUS = re.compile(r"(?<![\w.])-(?=\d)")
EXPONENT = re.compile(r"(\d)e([-+])0*(\d)")
THOUSANDS = re.compile(r"(?<![\w.:/−\u200b-])\d{4,}(?![\w.])")  # not in names broken at _ (`breakable`)


def _subscript(match: re.Match) -> str:
    """C_jac as C~jac~, C_jac^spec as C~jac~^spec^ (Pandoc's sub- and superscripts, in HTML and typst)."""
    return f"{match.group(1)}~{match.group(2)}~" + ("^spec^" if match.group(3) else "")


def typeset(text: str) -> str:
    """Text the analysis wrote, as the report prints it (code spans left alone): C_jac as C~jac~, 2^16 as 2^16^, one CI
    style ('CI 0.44 to 0.64'), '95 %' as '95%', minus signs, '2e-07' as '2e-7', '9999' as '9,999', an apostrophe
    after a digit (typst would set TRAPPC3's with a prime), the seed's criteria as the original plan's."""
    parts = re.split(r"(`[^`]*`)", str(text))
    for i in range(0, len(parts), 2):
        t = SEED_PLAN.sub("original plan", re.sub(r"(\d) %", r"\1%", parts[i]))
        t = re.sub(r"(?<=\d)'", "’", t)
        t = EXPONENT.sub(r"\1e\2\3", CI_BRACKETS.sub(r"CI \1 to \2", t))
        t = THOUSANDS.sub(lambda m: f"{int(m.group()):,}", t)
        parts[i] = POWER.sub(r"\1^\2^", SYMBOL.sub(_subscript, MINUS.sub("−", t)))
    return "".join(parts)


def _cell(value) -> str:
    return typeset(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, widths: list[int], align: str | None = None) -> Md:
    """A pipe table with explicit column widths and alignment, for both HTML and typst.

    widths: relative column widths; Pandoc turns the dash counts into the typst table's `columns: (…%, …)`, so the
    PDF does not size columns from their content (long cells would overprint their neighbours). align: one letter per
    column, 'l' (default) or 'r' (numbers).
    """
    align = align or "l" * len(frame.columns)
    rule = {"l": ":{}", "r": "{}:"}
    lines = ["| " + " | ".join(_cell(c) for c in frame.columns) + " |",
             "|" + "|".join(rule[a].format("-" * max(3, w)) for w, a in zip(widths, align)) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return Md("\n".join(lines))


def library_legend(libraries) -> str:
    """'GO BP: GO_Biological_Process_2021; Hallmark: MSigDB_Hallmark_v7.0' for the libraries a table names."""
    named = sorted({str(lib) for lib in libraries if library_short(str(lib)) != str(lib)})
    return "; ".join(f"{library_short(lib)}: {breakable(lib)}" for lib in named)


# ---------------------------------------------------------------- numbers for the prose
def numbers(results: Results) -> SimpleNamespace:
    """Every number the article's prose quotes, formatted (inline `{python} N.name`)."""
    cfg, p1, p3, prov = results.config, results.effects, results.routing, results.provenance
    ev, svd, rule = p3.evidence, p3.svd, cfg.decision_rule
    mantel, contrast = ev.mantel_pearson, ev.contrast
    labels = p1.labels
    n_kds, n_genes, hidden = prov["n_kds"], prov["n_genes"], prov["hidden_dim"]
    lo, hi = ev.pearson_ci
    ari = p1.bootstrap_ari
    reproducibility = p1.kd_table["draw_cosine"]
    chosen = p1.silhouette.loc[p1.silhouette["silhouette"].idxmax()]
    values = dict(
        n_kds=f"{n_kds:,}", n_genes=f"{n_genes:,}", hidden=f"{hidden:,}", set_size=f"{prov['set_size']:,}",
        n_draws=f"{cfg.n_draws}", seed=f"{cfg.seed}", lines_phrase=lines_phrase(results), space=prov.get("space", "the model's output space"),
        jacobian_size=f"{n_genes * hidden:,}", jacobian_total=f"{n_kds * n_genes * hidden:,}",
        jacobian_gb=f"{n_kds * n_genes * hidden * 4 / 1e9:.2g}",
        n_clusters=f"{int(labels.max())}", n_weak=f"{int((labels == 0).sum())}",
        n_clustered=f"{int((labels > 0).sum())}", max_clusters=f"{cfg.max_clusters}",
        silhouette=fmt(float(chosen["silhouette"])), n_cluster_bootstrap=f"{len(ari)}",
        ari_median=fmt(float(np.median(ari))) if len(ari) else "—",
        ari_min=fmt(float(np.min(ari))) if len(ari) else "—",
        draw_cosine_median=fmt(float(reproducibility.median()), 3),
        draw_cosine_min=fmt(float(reproducibility.min()), 3),
        n_permutations=f"{cfg.n_permutations:,}", n_bootstrap=f"{cfg.n_bootstrap:,}", alpha=f"{cfg.alpha:g}",
        fdr=f"{cfg.fdr:g}", r_threshold=f"{cfg.seed_r_threshold:g}", prerank_permutations=f"{cfg.prerank_permutations:,}",
        n_axes=f"{cfg.n_axes}", libraries=", ".join(breakable(Path(p).stem) for p in cfg.gene_sets) or "none",
        n_pairs=f"{ev.n_pairs:,}", pearson_r=fmt(mantel.statistic), r_se=fmt(mantel.standard_error, 3),
        r_bound=fmt(mantel.upper_bound, 3), spearman_r=fmt(ev.mantel_spearman.statistic), ci_low=fmt(lo), ci_high=fmt(hi),
        mantel_p=studentized_p(mantel),
        mantel_spearman_p=studentized_p(ev.mantel_spearman),
        partial_r=fmt(ev.partial_mantel.statistic),
        partial_p=studentized_p(ev.partial_mantel),
        rep_out_r=fmt(ev.mantel_out_rep.statistic),
        rep_out_p=studentized_p(ev.mantel_out_rep),
        keyed_r=fmt(ev.keyed_lookup_r),
        mean_same=fmt(contrast.mean_same), mean_cross=fmt(contrast.mean_cross),
        difference=fmt(contrast.difference, 3), contrast_sd=fmt(contrast.test.statistic),
        contrast_bound=fmt(contrast.test.upper_bound), jac_sd=fmt(contrast.spread, 3), auc=fmt(contrast.auc),
        n_same=f"{contrast.n_same:,}", n_cross=f"{contrast.n_cross:,}",
        contrast_p=studentized_p(contrast.test),
        rank_sum_p=p_phrase(contrast.rank_sum_p),
        jac_mean=fmt(ev.spread.jac_mean, 3), out_mean=fmt(ev.spread.out_mean, 3),
        equivalence_r=f"{rule.equivalence_r:g}", min_contrast=f"{rule.min_contrast:g}",
        contrast_r=fmt(contrast.r, 3), contrast_r_bound=fmt(contrast.r_bound, 3),
        equivalence_contrast_sd=fmt(rule.equivalence_r / contrast.r_scale if contrast.r_scale > 0 else float("nan")),
        min_specific_share=f"{rule.min_specific_share:g}", global_share=f"{rule.global_share:g}",
        min_cluster_share=f"{rule.min_cluster_share:g}",
        common_share=f"{100 * ev.decomposition.common_share:.2f}%",
        specific_share=f"{ev.decomposition.specific_share:.3g}",
        raw_r=fmt(ev.raw_mantel.statistic), raw_mantel_p=studentized_p(ev.raw_mantel),
        raw_contrast_sd=fmt(ev.raw_contrast.test.statistic),
        within_r=fmt(ev.within_mantel.statistic), within_bound=fmt(ev.within_mantel.upper_bound, 3),
        within_p=studentized_p(ev.within_mantel),
        noise_floor=prose.noise_floor(ev, rule).strip(), min_reliability=f"{rule.min_reliability:g}",
        cluster_level=cluster_level_phrase(ev),
        var_axis1=f"{100 * p3.variance_explained[0]:.0f}%",
        var_top=f"{100 * float(np.sum(p3.variance_explained[: cfg.n_axes])):.0f}%",
        svd_gene_term=str(svd.seed_gene_term), svd_gene_fdr=fmt_p(svd.seed_gene_fdr),
        svd_kd_term=str(svd.seed_kd_term), svd_kd_fdr=fmt_p(svd.seed_kd_fdr),
        svd_axes_read=f"{svd.n_axes}", svd_interpretable=f"{svd.n_interpretable}",
        svd_axes_described=next(c.note for c in p3.verdict.criteria if c.name.startswith("SVD axes show")), svd_output_interpretable=f"{svd.n_output_interpretable}",
        svd_beyond=f"{svd.n_beyond_output}", principal_cosine=fmt(svd.min_principal_cosine),
        reason=prose.reason(p3, rule), caveat=prose.caveat(p3, results.interventions),
        linearity_median=fmt(float(p3.linearity["explained"].median())),
        linearity_q1=fmt(float(p3.linearity["explained"].quantile(0.25))),
        linearity_q3=fmt(float(p3.linearity["explained"].quantile(0.75))),
        linearity_negative=negative_linearity(p3.linearity),
        call=p3.verdict.call, call_phrase=call_phrase(results),
        checkpoint=project_path(results, Path(cfg.run_dir) / "checkpoints" / cfg.checkpoint),
        checkpoint_sha=prov["checkpoint_sha256"], data=project_path(results, cfg.h5ad), data_sha=prov["data_sha256"],
        input_key=prov["input_key"], code_version=prov["code_version"], config_file=config_file(results),
        device=prov["device"], jacobian_seconds=f"{p3.seconds.get('jacobians', float('nan')):.0f}",
        jvp_ratio=f"{n_genes / hidden:.1f}", weak_fraction=f"{cfg.weak_fraction:g}",
        autograd_kd=p3.autograd_check["kd"], autograd_error=f"{p3.autograd_check['relative_error']:.1e}",
        **intervention_numbers(results),
    )
    return SimpleNamespace(**{k: Md(typeset(v)) for k, v in values.items()})


def intervention_numbers(results: Results) -> dict:
    """The interventions' numbers the prose quotes (`sub_*`: centroid substitution; `swap_*`: interchange)."""
    intervened, rule = results.interventions, results.config.decision_rule
    s, i = intervened.substitution, intervened.interchange
    g = s.gain
    values = dict(
        use=results.routing.verdict.use, random_groups=f"{s.random_groups}", substitution_margin=f"{rule.substitution_margin:g}",
        sub_n_kds=f"{s.n_kds}", sub_n_clusters=f"{g.n_clusters}", sub_cosine=fmt(s.cosine),
        sub_random_cosine=fmt(s.random_cosine), sub_share=fmt(s.share), sub_random_share=fmt(s.random_share),
        sub_size=fmt(s.size_ratio), sub_gain=fmt(g.estimate, 3), sub_se=fmt(g.standard_error, 3),
        sub_bound=fmt(g.bound, 3), sub_lower=fmt(g.lower, 3),
        sub_p=p_phrase(g.p_value, None if g.exact else g.n_sign_patterns) if g.n_clusters >= 2 else "p undefined",
        sub_floor=fmt_p(2.0 ** -g.n_clusters) if g.n_clusters else "—",
        intervention_sets=f"{intervened.n_sets:,}", intervention_seconds=f"{intervened.seconds:.0f}",
        intervention_share=f"{100 * intervened.seconds / max(results.routing.seconds['jacobians'], 1e-9):.0f}%",
        use_meaning=prose.use_meaning(results.routing), use_reason=prose.use_reason(intervened),
        synthesis=prose.synthesis(results.routing) or "the routing call and the interventions' answer are read side by side",
    )
    steps = np.abs(results.steering.table["step"].to_numpy())
    values |= dict(steering_steps=f"±{steps.min():g} to ±{steps.max():g}",
                   steering_tolerance=f"{results.steering.tolerance:g}")
    if i is not None:
        values |= dict(swap_rank=f"{i.rank}", swap_accuracy=f"{100 * i.accuracy:.0f}%",
                       swap_null=f"{100 * i.null_accuracy:.0f}%",
                       swap_p=p_phrase(i.gain.p_value, None if i.gain.exact else i.gain.n_sign_patterns))
    else:
        values |= dict.fromkeys(("swap_rank", "swap_accuracy", "swap_null", "swap_p"), "—")
    return values


def interventions_text(results: Results) -> Md:
    """The interventions' Results paragraph: what substitution and interchange showed, and their cost."""
    n = numbers(results)
    swap = (f" Swapping the cluster-shared component (rank {n.swap_rank}) for another cluster's moved the response "
            f"to that cluster for {n.swap_accuracy} of KDs, against {n.swap_null} for the same swap along random "
            f"directions ({n.swap_p})." if results.interventions.interchange is not None else "")
    return Md(typeset(
        f"{n.sub_n_kds} KDs in {n.sub_n_clusters} output clusters were substituted. At its "
        f"cluster's leave-one-out centroid, a KD's response pointed along its own ΔY with mean cosine {n.sub_cosine}, "
        f"against {n.sub_random_cosine} at random groups' centroids; the centroid reproduced a mean share "
        f"{n.sub_share} of ΔY (random groups {n.sub_random_share}), at a median size ratio of {n.sub_size}. The gain, "
        f"{n.sub_gain} in cosine (delete-one-cluster SE {n.sub_se}; one-sided 95% bounds {n.sub_lower} to "
        f"{n.sub_bound}; cluster sign-flip {n.sub_p}, whose floor with {n.sub_n_clusters} clusters is {n.sub_floor}), "
        f"answers the question: the geometry is **{n.use}**.{swap} The interventions took {n.intervention_seconds} s "
        f"for {n.intervention_sets} sets, {n.intervention_share} of the Jacobian stage's time."))


def steering_text(results: Results) -> Md:
    """The steering paragraph: how far each routing axis's first-order picture holds, and whether ΔY follows it."""
    steering = results.steering
    table = steering.table
    parts = []
    for (axis, kd), frame in table.groupby(["axis", "kd"], sort=True):
        radius = steering.trust_radius[int(axis) - 1]
        held = (f"holds within {steering.tolerance:g} up to {radius:g} median KD offsets"
                if radius > 0 else f"misses by more than {steering.tolerance:g} already at the smallest step")
        parts.append(f"axis {axis} (from {kd}): the first-order prediction {held}, and the change of ΔY has median "
                     f"|cos| {fmt(float(frame['cos_loading'].abs().median()))} with the axis's gene loading")
    return Md(typeset(
        f"Steering p along the leading routing axes (steps of "
        f"{', '.join(f'{t:g}'.replace('-', '−') for t in sorted(table['step'].unique()))} × {fmt(steering.scale, 3)}, the median distance "
        f"of a KD's `pert_repr` from the control's): " + "; ".join(parts) + ". A trust radius says how far the "
        "Jacobians' local picture of routing extends; beyond it the model's gates open or close."))


def depth_paragraph(results: Results) -> Md:
    """Routing block by block: where in depth the cluster structure of routing appears (`prose.depth_text`)."""
    text = prose.depth_text(results.routing)
    return Md(typeset(text[0].upper() + text[1:] + ".") if text else "")


def cluster_level_phrase(evidence) -> str:
    """The between-cluster r in a clause: 'r = 0.41 over the 10 pairs of 5 clusters (p = 0.04)'."""
    cl = evidence.cluster_level
    if cl is None or cl.r != cl.r:
        return "undefined (fewer than 3 clusters)"
    return f"r = {fmt(cl.r)} over the {cl.n_pairs} pairs of {cl.n_clusters} clusters ({p_phrase(cl.p_value, cl.n_permutations)})"


def negative_linearity(linearity: pd.DataFrame) -> str:
    """The KDs whose first-order term points away from their effect (a negative explained share), by cluster."""
    negative = linearity[linearity["explained"] < 0]
    if negative.empty:
        return "No KD has a negative share."
    clusters = sorted(int(c) for c in negative["cluster"].unique())
    where = (f"cluster {clusters[0]}" if len(clusters) == 1
             else "clusters " + ", ".join(map(str, clusters[:-1])) + f" and {clusters[-1]}")
    return (f"{len(negative)} KD{'s' if len(negative) > 1 else ''} ({where}; lowest share "
            f"{fmt(float(negative['explained'].min()))}) {'have' if len(negative) > 1 else 'has'} a negative share: "
            f"the first-order term points away from the KD's effect, so the Jacobian at the KD does not describe "
            f"that effect, and the routing comparisons below read these KDs' local routing only.")


def data_description(results: Results) -> Md:
    """The data in a sentence: cells per analysed line (controls and perturbed) from the .h5ad, and how the model was
    trained, from the run's config.yaml (what `state tx train` records)."""
    import anndata
    import yaml

    cfg = results.config
    obs = anndata.read_h5ad(cfg.h5ad, backed="r").obs
    counts = []
    for line in results.lines:
        cells = obs[obs[cfg.cell_type_column] == line.cell_line] if line.cell_line else obs
        controls = int((cells[cfg.perturbation_column] == cfg.control_label).sum())
        counts.append(f"{line.cell_line or SINGLE_LINE}: {len(cells):,} cells, {controls:,} of them controls, "
                      f"{cells[cfg.perturbation_column].nunique() - 1:,} perturbations")
    training = (yaml.safe_load((cfg.run_dir / "config.yaml").read_text()) or {}).get("training") or {}
    trained = ", ".join(f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k.replace('_', ' ')} {v}"
                        for k, v in training.items() if k in ("max_steps", "batch_size", "lr"))
    return Md(f"The data file holds {'; '.join(counts)}. The model was trained "
              + (f"with {trained} (its `config.yaml`)." if trained else "as its run folder records (no training "
                 "section in its `config.yaml`)."))


SINGLE_LINE = "the single cell type of the data"  # how a config without [data] cell_line reads


def lines_phrase(results: Results) -> str:
    """'HepG2' or 'each analysed line (HepG2, the primary line the next sections show, and K562), on its own'."""
    names = [line.cell_line or SINGLE_LINE for line in results.lines]
    if len(names) == 1:
        return names[0]
    return f"each analysed line ({names[0]}, the primary line the next sections show, and {', '.join(names[1:])}), on its own"


def is_demo(results: Results) -> bool:
    return bool(results.config.demo)


# ---------------------------------------------------------------- abstract
def call_phrase(results: Results) -> Md:
    """'**positive**: Model B (internalized circuits) — the transformer uses …': the call, then its meaning with
    the call's own name dropped and at most one colon in the sentence."""
    verdict = results.routing.verdict
    meaning = re.sub(rf"^{re.escape(verdict.call)}\s*[:—–-]\s*", "", prose.meaning(results.routing))
    return Md(f"**{verdict.call}**: {meaning.replace(': ', ' — ', 1)}")


def abstract(results: Results) -> Md:
    """The abstract's result sentences: the common share, then what each deciding criterion showed on the
    KD-specific routing (effect, bound, p)."""
    n = numbers(results)
    mantel, contrast = results.routing.verdict.deciding
    share = (f"Across {n.n_kds} knock-downs, routing common to every KD carries {n.common_share} of the Jacobian "
             f"energy; the rest is KD-specific")
    r_part = f"Pearson r = {n.pearson_r}, one-sided 95% upper bound {n.r_bound}, studentized Mantel {n.mantel_p}"
    first = {"Model B": f"KD-specific routing similarity tracked output similarity ({r_part})",
             "Model A": f"KD-specific routing similarity tracked output similarity by less than the smallest effect "
                        f"of interest (bound {n.r_bound} < {n.equivalence_r}; {r_part})",
             "neither": f"whether KD-specific routing similarity tracks output similarity stays open ({r_part})"}[
        mantel.supports]
    c_part = (f"point-biserial r = {n.contrast_r} ({n.contrast_sd} SD), upper bound {n.contrast_r_bound}, "
              f"studentized cluster-label permutation {n.contrast_p}")
    second = {"Model B": f"same-output-cluster KDs shared KD-specific routing ({c_part})",
              "Model A": f"same-output-cluster KDs shared KD-specific routing by less than the smallest effect of "
                         f"interest (bound {n.contrast_r_bound} < {n.equivalence_r}; {c_part})",
              "neither": f"whether same-output-cluster KDs share KD-specific routing stays open ({c_part})"}[
        contrast.supports]
    verdict = f"The verdict is {call_phrase(results)}."
    if results.routing.verdict.use:
        verdict += (f" Asked directly, by substituting each KD's representation with its cluster's shared part, the "
                    f"encoder geometry is **{results.routing.verdict.use}** (cosine gain over random groups "
                    f"{n.sub_gain}, upper bound {n.sub_bound}, {n.sub_p})"
                    + (f": {prose.synthesis(results.routing)}." if prose.synthesis(results.routing) else "."))
    caveat = prose.caveat(results.routing, results.interventions)
    caveat = f" {caveat}" if caveat else ""
    lines = f" {across_sentence(results)}" if results.across is not None else ""
    return Md(typeset(f"{share}; {first}; {second}. {verdict}{caveat}{lines}"))


# ---------------------------------------------------------------- across cell lines
def across_sentence(results: Results) -> str:
    """Per pair of lines, routing against output consistency: the KD-specific comparison (the answer), then the raw
    one (abstract, section text)."""
    parts = []
    for a, b in results.across.pairs:
        specific, raw = results.across.pair_tests(a, b)
        parts.append(f"Between {a} and {b} ({specific.n_kds} KDs), a KD's own routing was "
                     f"{prose.DIRECTIONS[specific.direction]} ({_paired(specific)}; on raw cosines {_paired(raw)}).")
    return " ".join(parts)


def _paired(test: PairedDifference) -> str:
    return (f"{'KD-specific ' if test.measure == 'specific' else ''}cos J − cos ΔY = {fmt(test.estimate)}, 95% CI "
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
        f"{fmt(frame['baseline_jacobian'].median())}"
        for (a, b), frame in table.groupby(["line_a", "line_b"], sort=False))
    return Md(typeset(f"The same model was analysed on each line's own control cells (every stage per line; the sections above "
              f"show {results.lines[0].cell_line}, the primary line). Per line, the call and its two deciding statistics: "
              f"{calls}. For every KD analysed in both lines, the cosine of its ΔY between the lines measures whether "
              f"the model predicts the same response there, and the cosine of its flattened Jacobian whether it routes "
              f"the KD through the same directions. Each is read against its baseline, the KD's mean cosine with the "
              f"other KDs across the lines, because a component shared by all KDs (large for Jacobians: mean C_jac "
              f"{fmt(results.routing.evidence.spread.jac_mean)} within {results.lines[0].cell_line}) makes every raw "
              f"cosine high ({medians}). {across_sentence(results)} KDs of one output cluster are not independent, "
              f"so the units of the sign-flip test and of the bootstrap interval are the primary line's output "
              f"clusters (@tbl-tests){sign_flip_floor(results)}."))


def sign_flip_floor(results: Results) -> str:
    """With few clusters an exact sign flip has a floor: 2 of the 2^n patterns are at least as extreme (two-sided)."""
    floors = {test.n_units for a, b in results.across.pairs for test in results.across.pair_tests(a, b) if test.exact}
    return "".join(f"; with {n} clusters the smallest p an exact two-sided sign flip can give is 2/2^{n} = "
                   f"{fmt_p(2 / 2 ** n)}" for n in sorted(floors))


def caveat_callout(results: Results) -> Md:
    """The construct's caveat as a callout beneath a positive call (nothing otherwise)."""
    caveat = prose.caveat(results.routing, results.interventions)
    return Md(f"::: {{.callout-note}}\n{typeset(caveat)}\n:::" if caveat else "")


def demo_note(results: Results) -> Md:
    """First thing under the title when the run is the embedded demo: what it is, before any finding."""
    if not is_demo(results):
        return Md("")
    lines = " and ".join(f"“{line.cell_line}”" for line in results.lines)
    return Md('::: {.callout-important title="Demo run on synthetic data: no biological finding"}\n'
              "This report analyses the embedded demo, not a model trained on real cells: a small arc-state "
              "State-Transition model trained on a synthetic Perturb-seq world. Its genes are synthetic (named after "
              "real genes so that the bundled gene-set libraries can be read on them, which is why real GO and "
              f"Hallmark terms appear), its cell lines {lines} are synthetic stand-ins, and its KDs come in planted "
              "modules (ribosome, mitoribosome, proteasome, TRAPP, MYC, spliceosome, mediator) plus KDs without "
              "effect. The numbers show what the method finds when the answer is planted; the prior-work table "
              "compares them with notebooks run on a real model only to show where each question is answered. "
              "Render with `-P config:…` to report on a real run.\n:::")


def discussion(results: Results) -> Md:
    """The opening paragraph of the discussion, worded for the call this run reached."""
    n = numbers(results)
    call = results.routing.verdict.call
    opening = {
        "cluster circuits": (f"Beyond the routing every KD shares ({n.common_share} of the energy), KDs of one output "
                             f"cluster share routing that KDs of other clusters do not (r = {n.pearson_r}, "
                             f"{n.mantel_p}; {n.contrast_sd} SD, {n.contrast_p}). The two statistics read the same "
                             f"cluster blocks; within clusters r = {n.within_r} ({n.within_p}) says whether routing "
                             f"also follows outputs beyond them."),
        "per-KD": (f"Most routing is KD-specific (common share {n.common_share}), and its sharing within output "
                   f"clusters is smaller than the smallest effect of interest: bounds {n.r_bound} and "
                   f"{n.contrast_r_bound} below {n.equivalence_r} (both on the r scale). This is evidence for "
                   f"Model A's per-KD routing; whether the encoder geometry is used at all needs intervention."),
        "global readout": (f"One routing carries {n.common_share} of every KD's Jacobian. "
                           f"{prose.reason(results.routing, results.config.decision_rule)}"),
        "mixed": (f"The deciding criteria point in opposite directions (r = {n.pearson_r}, {n.mantel_p}; contrast "
                  f"r = {n.contrast_r}, {n.contrast_p}); @tbl-verdict shows which supports which."),
        "inconclusive": (f"The data do not decide: at least one criterion neither reaches its minimum effect with "
                         f"significance nor has an upper bound below the smallest effect of interest (r = {n.pearson_r}, "
                         f"bound {n.r_bound}; contrast r = {n.contrast_r}, bound {n.contrast_r_bound}). More KDs "
                         f"narrow the bounds."),
        "degenerate": (f"The responses are degenerate: {prose.reason(results.routing, results.config.decision_rule)}"),
        "unreliable": (f"The KD-specific routing does not reproduce across independent control-cell draws, so the "
                       f"deciding statistics (r = {n.pearson_r}, {n.mantel_p}; contrast r = {n.contrast_r}, "
                       f"{n.contrast_p}) read draw-to-draw noise, not routing. {n.noise_floor} More control draws "
                       f"(n_draws) lower the floor."),
    }[call]
    use = results.routing.verdict.use
    if use:
        reading = prose.synthesis(results.routing)
        opening += (f" Asked of the model directly, the encoder geometry is {use}: substituting each KD's "
                    f"representation with its cluster's shared part gains {n.sub_gain} in cosine over random groups "
                    f"(bound {n.sub_bound}, {n.sub_p})" + (f" — {reading}." if reading else "."))
    return Md(typeset(opening))


# ---------------------------------------------------------------- tables
def tests_table(results: Results) -> Md:
    """Every statistical test of the report: what it tests, how, and why that inference."""
    cfg = results.config
    perm, boot = f"{cfg.n_permutations:,}", f"{cfg.n_bootstrap:,}"
    pair_note = "pairs share KDs, so pairs are not independent units"
    ev = results.routing.evidence

    def null(permuted: str) -> str:  # how the studentized tests' p-values were referred (`routing.reference_for`)
        if ev.borderline is not None:
            low, high = ev.borderline
            return (f"referred to N(0, 1) with the SE from the Hoeffding decomposition (normal reference: "
                    f"{ev.n_strong:,} strong-effect KDs, at least {cfg.normal_reference_kds:,}); a p between {low:g} "
                    f"and {high:g} is decided instead by {permuted} ({ev.borderline_permutations:,})")
        return f"{permuted} ({perm})"

    rows = [
        ("Output vs routing similarity", "Pearson r of the upper triangles of C_out and C_jac^spec, strong-effect KDs",
         f"studentized Mantel test [@mantel1967; @diciccio2017]: r / its delete-one-KD jackknife SE, "
         f"{null('KD labels of one matrix permuted')}, one-sided; one-sided 95% upper bound r + 1.645 SE for equivalence",
         pair_note + "; studentized because a plain permutation test assumes independence, not mere uncorrelation"),
        ("", "Spearman r (same pairs)", f"studentized Mantel test on ranks, {null('KD labels permuted')}", pair_note),
        ("", "95% CI of the Pearson r", f"KD-level bootstrap: KDs resampled with replacement ({boot}), percentile CI",
         "resampling KDs, not pairs, keeps each KD's pairs together"),
        ("Same- vs cross-cluster routing", "(mean C_jac(same) − mean C_jac(cross)) / SD(C_jac), clusters ≥ 1; AUC",
         f"difference / jackknife SE, {null('cluster labels permuted over KDs')}, one-sided; upper bound for "
         "equivalence",
         pair_note + "; labels are a KD-level property"),
        ("", "the same contrast, as the original plan wrote it",
         "Wilcoxon rank-sum on pairs", "reported for comparison; anti-conservative because " + pair_note),
        ("Routing beyond encoder geometry", "partial Mantel r(C_jac, C_out | C_rep)",
         f"{null('KD labels of C_jac permuted')}, one-sided [@smouse1986]", pair_note),
        ("Encoder geometry vs output", "Mantel r(C_out, C_rep)", null("KD labels permuted"), pair_note),
        ("KD-target enrichment per cluster", "over-representation of a cluster's KD targets",
         "hypergeometric test, background = all KDs of the screen, BH-FDR per cluster",
         "the screen is biased toward essential genes, so the genome is the wrong background"),
        ("Response enrichment per cluster", "the cluster's mean ΔY ranked over output genes",
         f"prerank GSEA ({cfg.prerank_permutations:,} gene-set permutations), BH-FDR per cluster",
         "a ranked response has no natural cut-off for a gene list"),
        ("SVD axes", "gene loadings over output genes; KD scores over KDs",
         f"prerank GSEA ({cfg.prerank_permutations:,}), BH-FDR per axis and ranking", "same as above"),
        ("Routing vs output consistency across cell lines",
         "mean over KDs of cos J − cos ΔY between two lines, each minus the KD's mean cosine with the other KDs "
         "(KD-specific; raw also reported)",
         f"sign flips of the primary line's output-cluster sums (every pattern up to 2^16, else {perm}), two-sided; "
         f"95% interval by resampling clusters ({boot})",
         "KDs of one cluster share responses, so clusters, not KDs, are the independent units"),
        ("Is the encoder geometry used?",
         "mean over KDs of cos(ΔY(cluster's leave-one-out centroid), ΔY_k) − mean cos(ΔY(random groups' centroids), ΔY_k)",
         "sign flips of the output-cluster sums (every pattern up to 2^16), one-sided; one-sided 95% upper bound from "
         "the delete-one-cluster jackknife with t on C − 1 df",
         "KDs of one cluster share their centroid's members, so clusters are the units"),
        ("", "interchange accuracy − the same swap along a random subspace of equal rank",
         "sign flips of the output-cluster sums, one-sided", "as above"),
        ("Number and stability of clusters", "mean silhouette on 1 − cos for 2 … max clusters; ARI",
         f"maximum silhouette; bootstrap of output genes ({cfg.cluster_bootstrap}) re-clustered at that number",
         "a stated, data-driven criterion; stability against the choice of genes"),
    ]
    frame = pd.DataFrame(rows, columns=["Question", "Statistic", "Inference", "Why this inference"])
    return markdown_table(frame, [16, 22, 24, 22])


# The verdict table's columns: criterion field -> heading. Everything else a criterion carries (statistic, test,
# note, and any field added later) is written beneath the table, numbered like the rows.
VERDICT_COLUMNS = {"name": "Criterion", "family": "Family", "value": "Value", "threshold": "Threshold",
                   "p_value": "p", "held": "Held"}


def _verdict_cell(field: str, value, n_permutations: int) -> str:
    if field == "value":
        return fmt(value, 3)
    if field == "p_value":
        return fmt_p(value, n_permutations)
    if field == "held":
        return "yes" if value else "no"
    return str(value)


def verdict_frame(results: Results) -> pd.DataFrame:
    """One row per verdict criterion, the columns of VERDICT_COLUMNS, formatted; row i is numbered (i)."""
    n = results.config.n_permutations
    rows = []
    for number, c in enumerate(results.routing.verdict.criteria, 1):
        row = {heading: _verdict_cell(field, getattr(c, field), n) for field, heading in VERDICT_COLUMNS.items()}
        row["Criterion"] = f"{row['Criterion']} ({number})"
        rows.append(row)
    return pd.DataFrame(rows, columns=list(VERDICT_COLUMNS.values()))


def verdict_table(results: Results) -> Md:
    return markdown_table(verdict_frame(results), [27, 17, 8, 22, 9, 6], "llrlrl")


def verdict_estimates(results: Results) -> pd.DataFrame:
    """The two deciding statistics of every analysed line with their one-sided 95% bounds, the two thresholds each is
    read against, and its p with the model it supports (for `plots.verdict_forest`)."""
    rule = results.config.decision_rule
    rows = []
    for line in results.lines:
        ev = line.routing.evidence
        mantel, contrast = line.routing.verdict.deciding
        for name, test, unit, model_b, model_a, criterion in (
                ("Output similarity predicts routing", ev.mantel_pearson, "Pearson r(C_out, C_jac^spec)", rule.min_r,
                 rule.equivalence_r, mantel),
                # the contrast's margin is the r-scale margin in SDs of this line's C_jac^spec (its pair share q)
                ("Same-cluster KDs share routing", ev.contrast.test, "same − cross mean C_jac^spec, in SD",
                 rule.min_contrast, rule.equivalence_r / ev.contrast.r_scale if ev.contrast.r_scale > 0 else float("nan"),
                 contrast)):
            rows.append({"criterion": name, "line": line.cell_line or SINGLE_LINE, "statistic": test.statistic,
                         "lower": test.lower_bound, "upper": test.upper_bound, "model_b": model_b, "model_a": model_a,
                         "label": f"{studentized_p(test)}: {criterion.supports}", "unit": unit})
    return pd.DataFrame(rows)


def verdict_notes(results: Results) -> Md:
    """Beneath the verdict table: for each numbered criterion, what it measures, the test and the note."""
    lines = []
    for number, c in enumerate(results.routing.verdict.criteria, 1):
        extra = {k: v for k, v in dataclasses.asdict(c).items() if k not in VERDICT_COLUMNS and v not in ("", None)}
        parts = [f"{k.replace('_', ' ')}: {_note_value(v)}" for k, v in extra.items()]
        lines.append(typeset(f"({number}) " + "; ".join(parts) + "."))
    return Md("\n\n".join(lines))


def _note_value(value) -> str:
    """A criterion's field beneath the verdict table: a whole number (a count) without decimals."""
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else fmt(value, 3)
    return str(value)


def prior_work_table(results: Results) -> Md:
    frame = prose.prior_work_table(results).rename(columns={"prior": "Prior", "finding": "Finding",
                                                     "question": "What this tests", "this_run": "This run"})
    return markdown_table(frame, [7, 22, 22, 40])


def _term_cell(row: pd.Series, statistic: str | None = None) -> str:
    """'term [library]' with its FDR (and NES), the name wrappable at underscores."""
    stat = f"NES {fmt(row[statistic])}, " if statistic else ""
    return f"{breakable(row['term'])} [{library_short(row['library'])}] ({stat}FDR {fmt_p(row['fdr'])})"


MAX_TABLE_CLUSTERS = 15  # clusters a table lists (the largest: labels are numbered by size); the rest share one row


def _listed_clusters(labels: np.ndarray) -> tuple[list[int], list[int]]:
    """(listed, rest): the weak-effect group 0 and clusters 1..MAX_TABLE_CLUSTERS, then the smaller ones."""
    present = sorted(set(np.asarray(labels).tolist()))
    return [c for c in present if c <= MAX_TABLE_CLUSTERS], [c for c in present if c > MAX_TABLE_CLUSTERS]


def _rest_row(results: Results, rest: list[int], labels: np.ndarray, line: int, columns: list[str]) -> dict:
    """The row standing for the clusters a table does not list: how many, their KDs, and the stage file (in the
    cache) that has every KD's cluster."""
    suffix = f" ({results.lines[line].cell_line})" if len(results.lines) > 1 else ""
    folder = Path((results.stage_paths or {}).get(f"effects{suffix}", "effects"))
    note = (f"{len(rest)} smaller clusters; every KD's cluster: "
            f"{breakable(f'{folder.parent.name}/{folder.name}/kd_table.parquet')} in the cache")
    return {columns[0]: f"{rest[0]}–{rest[-1]}", columns[1]: f"{int(np.isin(labels, rest).sum())}", columns[2]: note}


def cluster_table(results: Results, line: int = 0) -> Md:
    """Per output cluster of the `line`-th analysed line (0: the primary one): size and members, the best KD-target
    ORA term and the best response GSEA term; the clusters past MAX_TABLE_CLUSTERS in one row."""
    if line >= len(results.lines):
        return markdown_table(pd.DataFrame({"Cluster": ["—"], "Note": ["one cell line was analysed"]}), [10, 40])
    p1 = results.lines[line].effects
    top_ora = top_terms(p1.ora).set_index("query")
    top_gsea = top_terms(p1.gsea).set_index("query")
    listed, rest = _listed_clusters(p1.labels)
    rows = []
    for cluster, members in p1.kd_table[p1.kd_table["cluster"].isin(listed)].groupby("cluster"):
        q = f"cluster {cluster}"
        names = list(members["kd"])
        shown = ", ".join(names[:6]) + (f", … (+{len(names) - 6})" if len(names) > 6 else "")
        rows.append({"Cluster": "0 (weak)" if cluster == 0 else str(cluster), "KDs": len(names), "Members": shown,
                     "KD targets (ORA)": _term_cell(top_ora.loc[q]) if q in top_ora.index else "—",
                     "Response (GSEA)": _term_cell(top_gsea.loc[q], "nes") if q in top_gsea.index else "—"})
    if rest:
        rows.append(_rest_row(results, rest, p1.labels, line, ["Cluster", "KDs", "Members"])
                    | {"KD targets (ORA)": "—", "Response (GSEA)": "—"})
    return markdown_table(pd.DataFrame(rows), [10, 5, 25, 30, 30], "lrlll")


def routing_by_cluster_table(results: Results) -> Md:
    """Per output cluster: its KDs, mean C_jac between its KDs and between them and the other clustered KDs, and the
    median share of ΔY the first-order term explains (how far the local Jacobian describes the cluster's effects);
    the clusters past MAX_TABLE_CLUSTERS in one row."""
    labels, c_jac = results.effects.labels, results.routing.c_jac
    linearity = results.routing.linearity.groupby("cluster")["explained"].median()
    listed, rest = _listed_clusters(labels)
    rows = []
    for cluster in listed:
        inside = np.flatnonzero(labels == cluster)
        others = np.flatnonzero((labels != cluster) & (labels > 0))
        within = c_jac[np.ix_(inside, inside)][np.triu_indices(len(inside), k=1)]
        rows.append({"Cluster": "0 (weak)" if cluster == 0 else str(cluster), "KDs": f"{len(inside)}",
                     "Mean C_jac within": fmt(float(within.mean()), 3) if len(within) else "—",
                     "Mean C_jac to other clusters": fmt(float(c_jac[np.ix_(inside, others)].mean()), 3)
                     if len(others) else "—",
                     "Median linear share": fmt(float(linearity.get(cluster, np.nan)))})
    if rest:
        rows.append(_rest_row(results, rest, labels, 0, ["Cluster", "KDs", "Mean C_jac to other clusters"])
                    | {"Mean C_jac within": "", "Median linear share": ""})
    return markdown_table(pd.DataFrame(rows), [10, 6, 16, 20, 16], "lrrrr")


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
    sharing level, the planted cosine of ΔY between the lines and the model's cosines of ΔY and J (medians).
    planted: kd, module, sharing, true_cosine, as `datasets.demo.load_line_truth` gives them (None: not a demo)."""
    if results.across is None or planted is None:
        note = "one cell line analysed" if results.across is None else "not a demo run: no planted truth"
        return markdown_table(pd.DataFrame({"Planted sharing": ["—"], "Note": [note]}), [10, 40])
    table = results.across.table.merge(planted.dropna(subset=["sharing"]), on="kd")
    rows = []
    for sharing, group in table.groupby("sharing", sort=False):
        rows.append({"Planted sharing": f"{100 * sharing:.0f}%", "Modules": ", ".join(sorted(group["module"].unique())),
                     "KDs": f"{len(group)}", "Planted cos ΔY": fmt(group["true_cosine"].median()),
                     "Model cos ΔY": fmt(group["cos_output"].median()), "Model cos J": fmt(group["cos_jacobian"].median())})
    frame = pd.DataFrame(rows).sort_values("Planted sharing", key=lambda c: -c.str.rstrip("%").astype(float))
    return markdown_table(frame, [10, 30, 6, 12, 12, 12], "llrrrr")


def svd_table(results: Results) -> Md:
    """The best prerank term of each leading axis, for gene loadings and for KD scores."""
    table = results.routing.svd_enrichment
    table = table[table["source"] == "routing"] if "source" in table else table
    if table.empty:
        return Md("No SVD enrichment was computed.")
    best = table.sort_values(["fdr", "p_value"]).groupby(["axis", "kind"], sort=True).head(1).sort_values(["axis", "kind"])
    variance = results.routing.variance_explained
    frame = pd.DataFrame({
        "Axis": best["axis"].astype(int), "Share": [f"{100 * variance[a - 1]:.1f}%" for a in best["axis"]],
        "Ranking": best["kind"],
        "Top term [library]": [f"{breakable(t)} [{library_short(lib)}]" for t, lib in zip(best["term"], best["library"])],
        "NES": best["nes"].map(fmt), "FDR": best["fdr"].map(fmt_p)})
    return markdown_table(frame, [5, 7, 9, 55, 7, 8], "rrllrr")


def calibration_frame(stored: dict | None) -> pd.DataFrame | None:
    """The calibration table (`benchmarks/calibration.py` writes it; `datasets.calibration.stored_rates` reads it):
    per world, the rejection rates of the two tests that decide and of the original plan's rank-sum test, and the
    share of each call and of the calls that would be wrong in that world."""
    if stored is None:
        return None
    rows = []
    for rates in stored["rates"]:
        rej = rates["rejections"]
        pct = (lambda v: f"{100 * v:.1f}%")
        partial = f"; partial Mantel {pct(rej['partial Mantel'])}" if "partial Mantel" in rej else ""
        rows.append({"World (replicates)": f"{breakable(rates['world'])} ({rates['n_replicates']:,}{partial})",
                     "Mantel": pct(rej["Mantel (studentized)"]), "Contrast": pct(rej["cluster contrast (studentized)"]),
                     "Rank-sum": pct(rej["pair-level rank-sum"]),
                     "Calls: circuits / per-KD / global / unreliable": " / ".join(
                         pct(rates["calls"].get(call, 0.0)) for call in ("cluster circuits", "per-KD",
                                                                         "global readout", "unreliable")),
                     "False calls": pct(rates["false_rate"]) if rates.get("false_calls") else "—"})
    return pd.DataFrame(rows)


def intervention_calibration_table(stored: dict | None) -> Md:
    """The interventions' calibration (`benchmarks/calibration.py` writes it; `datasets.calibration.stored_use_rates`
    reads it): per world, the substitution test's rejection rate and the share of each answer, wrong ones marked."""
    if stored is None:
        return Md("The interventions' calibration is written by `python benchmarks/calibration.py`; it was not "
                  "found here.")
    pct = (lambda v: f"{100 * v:.1f}%")
    rows = [{"World (replicates)": f"{breakable(r['world'])} ({r['n_replicates']:,})",
             "Planted": r["expected"], "Rejects": pct(r["rejection"]),
             "Used / not used / undecided": " / ".join(pct(r["uses"].get(u, 0.0)) for u in ("used", "not used",
                                                                                               "inconclusive")),
             "Wrong answer": f"{pct(r['false_rate'])} ± {pct(r['false_se'])}", "Mean gain": fmt(r["mean_gain"], 3)}
            for r in stored["rates"]]
    return markdown_table(pd.DataFrame(rows), [26, 10, 9, 22, 15, 9], "llrrrr")


def calibration_table(stored: dict | None) -> Md:
    frame = calibration_frame(stored)
    if frame is None:
        return Md("The calibration table is written by `python benchmarks/calibration.py`; it was not found here.")
    return markdown_table(frame, [28, 11, 11, 11, 27, 12], "lrrrrr")


def enrichment_legend(results: Results) -> Md:
    """Beneath the tables that name gene-set libraries: what the short names stand for."""
    libraries = pd.concat([results.effects.ora["library"], results.effects.gsea["library"],
                           results.routing.svd_enrichment.get("library", pd.Series(dtype=str))])
    legend = library_legend(libraries)
    return Md(f"Libraries: {legend}." if legend else "")


def config_values(results: Results) -> dict:
    """The configuration as it was used: paths relative to the config file, defaults resolved to what the run took
    (K KDs, S cells a set, the device), so the table agrees with the text."""
    cfg, prov = results.config, results.provenance
    described = cfg.describe()
    values = {}
    for field, value in described.items():
        if field in ("run_dir", "h5ad", "cache_dir"):
            value = config_relative(results, value)
        elif field == "gene_sets":
            value = ", ".join(_gene_set_name(results, v) for v in value) or "none"
        elif field == "kds":
            value = (f"{', '.join(value)} ({prov['n_kds']} KDs)" if value
                     else f"all {prov['n_kds']} KDs of the perturbation map in the cell line")
        elif field == "set_size":
            value = f"{prov['set_size']}" + (" (the model's cell_set_len)" if not value else "")
        elif field == "tangents_per_call" and not value:
            value = "0 (chosen for the device and set size)"
        elif field == "space":
            value = f"{value}: {prov['space']}" if "space" in prov else value
        elif field == "device":
            value = f"{value}: {prov['device']}" if value == "auto" else value
        elif field == "cell_lines":
            value = (", ".join(value) + (" (the first is the primary line)" if len(value) > 1 else "")
                     if value else SINGLE_LINE)
        values[field] = value
    return values


def _gene_set_name(results: Results, path) -> str:
    """A bundled library by its name (its path inside the installed package means nothing to a reader), else the
    file relative to the config."""
    return f"{Path(path).stem} (bundled)" if Path(path).parent == GENESETS_DIR else config_relative(results, path)


def config_table(results: Results) -> Md:
    values = config_values(results)
    frame = pd.DataFrame({"Field": list(values), "Value": [f"`{v}`" for v in values.values()]})
    return markdown_table(frame, [12, 40])


def _command(*args: str) -> str | None:
    """First line a command prints, or None when it is missing or fails."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent)
    except OSError:
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def render_versions() -> list[tuple[str, str]]:
    """The code and the tools of this rendering: the git commit of the analysis package (with '+ local changes' when
    the checkout differs from it), Quarto and its typst, when the report is rendered by Quarto."""
    commit = _command("git", "rev-parse", "--short=12", "HEAD")
    if commit and _command("git", "status", "--porcelain", "--untracked-files=no", "--", ".."):
        commit += " + local changes"
    rows = [("Git commit", commit or "not a git checkout")]
    quarto_bin = os.environ.get("QUARTO_BIN_PATH")
    if quarto_bin:
        typst = os.environ.get("QUARTO_TYPST") or next(iter(sorted(Path(quarto_bin).glob("tools/*/typst"))), None)
        rows += [("Quarto", _command(str(Path(quarto_bin) / "quarto"), "--version") or "unknown"),
                 ("typst (Quarto's)", (_command(str(typst), "--version") if typst else None) or "unknown")]
    return rows


def environment_table(results: Results) -> Md:
    """Software and hardware: the operating system's name only (the host's kernel string identifies a machine, not
    the environment), the versions the analysis ran with, and this rendering's commit and tools."""
    prov = results.provenance
    rows = [("Python", prov["python"]), ("Operating system", prov["platform"].split("-")[0]), ("Device", prov["device"]),
            ("CPU cores", prov["cpu_count"])]
    rows += [(name, version) for name, version in prov["versions"].items()]
    rows += render_versions()
    return markdown_table(pd.DataFrame(rows, columns=["Component", "Version / value"]), [12, 30])


def provenance_table(results: Results) -> Md:
    """Hashes, cache folders and stage timings."""
    prov, paths = results.provenance, results.stage_paths
    rows = [("Config file", f"`{config_file(results)}`"),
            ("Checkpoint sha256", f"`{prov['checkpoint_sha256']}`"), ("Control data sha256", f"`{prov['data_sha256']}`"),
            ("Input key (model + data + code)", f"`{prov['input_key']}`"), ("Code version", f"`{prov['code_version']}`")]
    rows += [(f"Cache: {stage}", f"`{config_relative(results, path)}`") for stage, path in paths.items()]
    labels = {"effects": "Effects (ΔY, clusters, enrichment)", "jacobians": "Jacobians",
              "routing": "Routing (Gram, SVD, statistics)"}
    for line in results.lines:
        where_line = f", {line.cell_line}" if len(results.lines) > 1 else ""
        device = line.routing.jacobian_device
        for stage, value in line.routing.seconds.items():
            where = f" on {device}" if stage == "jacobians" and device else ""
            rows.append((f"Time: {labels.get(stage, stage)}{where_line}", f"{value:,.1f} s{where}"))
    if results.across is not None:
        rows.append(("Time: across cell lines (cosines, paired test)", f"{results.across.seconds:,.1f} s"))
    return markdown_table(pd.DataFrame(rows, columns=["Item", "Value"]), [16, 45])

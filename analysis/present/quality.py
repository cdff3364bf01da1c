"""Part 0 in words, tables and one chart: how well the model predicts the KDs it is analysed on (cell-eval's scores
beside the mean-response baseline and the split-half ceiling), seen against held-out KDs, and the call re-read on
the KDs it predicts better than the baseline. Nothing here computes a score; it formats `QualityResult`."""

from __future__ import annotations

import altair as alt
import pandas as pd

from ..results import QualityResult, Results, Verdict
from .formatting import Md, fmt, markdown_table, p_phrase, typeset

# cell-eval metric -> (how the report names it, the references it is shown for): a DE metric is computed against
# control only, an error of the expression itself does not depend on the reference. The other metrics cell-eval
# computes stay in the stage's kd_table.parquet; a metric the run did not compute (DE metrics off) has no row.
SHOWN = {"pearson_delta": ("Pearson r of effects (pearson_delta)", ("control", "perturbed mean")),
         "discrimination_score_l1": ("discrimination (L1)", ("control", "perturbed mean")),
         "overlap_at_N": ("top-N DE gene overlap", ("control",)),
         "mae": ("mean absolute error of expression", ("control",))}
RULE = "the model's pearson_delta (against control) exceeds the mean-response baseline's for that KD"
SPLIT_UNKNOWN = "split not known"


def _scored(quality: QualityResult | None) -> bool:
    return quality is not None and not quality.status


def overall_frame(quality: QualityResult, group: str = "all") -> pd.DataFrame:
    """Metric × reference rows; Model, Baseline, Ceiling columns (formatted) for one group of KDs."""
    frame = quality.overall[quality.overall["group"] == group]
    rows = []
    for metric, (name, references) in SHOWN.items():
        for reference in references if metric in frame.columns else ():
            values = frame[frame["reference"] == reference].set_index("predictor")[metric]
            baseline = fmt(values.get("baseline", float("nan")), 3) if reference == "control" else "zero effects"
            rows.append({"Metric": name, "Reference": reference, "Model": fmt(values.get("model", float("nan")), 3),
                         "Baseline": baseline, "Ceiling": fmt(values.get("ceiling", float("nan")), 3)})
    return pd.DataFrame(rows)


def quality_table(results: Results) -> Md:
    """The overall table of the primary line (all scored KDs), or why nothing was scored."""
    quality = results.quality
    if not _scored(quality):
        return Md(f"*{quality.status if quality else 'Part 0 not run'}*")
    return markdown_table(overall_frame(quality), [30, 14, 8, 17, 8], "llrrr")


def split_table(results: Results) -> Md:
    """Model against baseline for seen and held-out KDs (pearson_delta, both references), or 'split not known'."""
    quality = results.quality
    if not _scored(quality) or quality.held_out is None:
        return Md(f"*{SPLIT_UNKNOWN}*: neither the run's config.yaml nor the config field held_out_kds names the "
                  "perturbations held out of training, so seen and held-out KDs cannot be told apart.")
    rows = []
    for group in ("seen", "held out"):
        frame = quality.overall[quality.overall["group"] == group]
        at = lambda predictor, reference: frame[(frame["predictor"] == predictor) & (frame["reference"] == reference)]
        model, base = at("model", "control"), at("baseline", "control")
        centred = at("model", "perturbed mean")
        rows.append({"KDs": group, "n": f"{int(model['n_kds'].iloc[0]) if len(model) else 0}",
                     "Model r (control)": fmt(model["pearson_delta"].mean(), 3),
                     "Baseline r (control)": fmt(base["pearson_delta"].mean(), 3),
                     "Model r (perturbed mean)": fmt(centred["pearson_delta"].mean(), 3)})
    return markdown_table(pd.DataFrame(rows), [10, 5, 18, 20, 24], "lrrrr")


def _values(quality: QualityResult, predictor: str, reference: str, metric: str = "pearson_delta") -> float:
    frame = quality.overall
    row = frame[(frame["group"] == "all") & (frame["predictor"] == predictor) & (frame["reference"] == reference)]
    return float(row[metric].iloc[0]) if len(row) else float("nan")


def not_learned(results: Results) -> str:
    """One sentence beside the call when the model predicts the observed responses worse than the mean-response
    baseline on most scored KDs ("" otherwise, or when Part 0 did not score): an analysis of routing in a model that
    has not learned the responses is about that model, not the biology."""
    quality = results.quality
    if quality is None or quality.status:
        return ""
    scored = quality.kd_table.loc[quality.kd_table["predictor"] == "model", "kd"].nunique()
    better = len(quality.well_predicted)
    if scored == 0 or better * 2 >= scored:
        return ""
    return (f"The model predicts the observed responses better than the mean-response baseline on only {better} of "
            f"{scored} scored KDs (Part 0; pearson_delta {fmt(_values(quality, 'model', 'control'), 3)} against the "
            f"baseline's {fmt(_values(quality, 'baseline', 'control'), 3)}): this call describes how this model "
            "routes, not how the biology does.")


def quality_text(results: Results) -> Md:
    """What was scored and what the scores say, for the Part 0 section."""
    quality, kds = results.quality, results.effects.responses.kd_names
    if not _scored(quality):
        return Md(f"Prediction quality was {quality.status if quality else 'not computed'}.")
    n_scored = len(kds) - len(quality.unscored)
    unscored = (f" {len(quality.unscored)} KDs have fewer than {results.config.min_observed_cells} observed cells and "
                f"are unscored: {', '.join(quality.unscored[:12])}{', …' if len(quality.unscored) > 12 else ''}."
                if quality.unscored else " Every analysed KD has observed cells.")
    model, base, ceiling = (_values(quality, p, "control") for p in ("model", "baseline", "ceiling"))
    centred, centred_ceiling = _values(quality, "model", "perturbed mean"), _values(quality, "ceiling", "perturbed mean")
    return Md(f"{n_scored} of {len(kds)} KDs have observed perturbed cells in the line and are scored.{unscored} "
              f"Against control, the model's mean pearson_delta is {fmt(model, 3)}, the mean-response baseline's "
              f"{fmt(base, 3)} and the split-half ceiling {fmt(ceiling, 3)}; against the perturbed mean (Systema's "
              f"reference, which removes the response every KD shares) the model reaches {fmt(centred, 3)} of a "
              f"ceiling of {fmt(centred_ceiling, 3)}. The model beats the baseline on "
              f"{len(quality.well_predicted)} of {n_scored} KDs. {metrics_sentence(quality)}")


def metrics_sentence(quality: QualityResult) -> str:
    """Which of cell-eval's metrics were computed, and why its differential-expression metrics were or were not."""
    return (f"cell-eval computed {', '.join(quality.metrics)}; its differential-expression metrics were "
            f"{'computed' if quality.de_metrics else 'not computed'} ({quality.de_reason}).")


def abstract_sentence(results: Results) -> Md:
    """One sentence for the abstract."""
    quality = results.quality
    if not _scored(quality):
        return Md("")
    return Md(f"Scored by cell-eval against the observed cells, the model's predicted effects correlate with the "
              f"observed ones at r = {fmt(_values(quality, 'model', 'control'), 2)} (mean-response baseline "
              f"{fmt(_values(quality, 'baseline', 'control'), 2)}, split-half ceiling "
              f"{fmt(_values(quality, 'ceiling', 'control'), 2)}; against the perturbed mean "
              f"{fmt(_values(quality, 'model', 'perturbed mean'), 2)}).")


def _call_row(name: str, n_kds: int, call: Verdict | None, evidence) -> dict:
    if call is None or evidence is None:
        return {"KDs": name, "n": f"{n_kds}", "Call": "too few KDs", "r(C_out, C_jac^spec)": "—",
                "Contrast r": "—"}
    mantel, contrast = evidence.mantel_pearson, evidence.contrast
    return {"KDs": name, "n": f"{n_kds}", "Call": call.call,
            "r(C_out, C_jac^spec)": f"{fmt(mantel.statistic)} (bound {fmt(mantel.upper_bound)}, "
                                    f"{p_phrase(mantel.p_value, mantel.n_permutations)})",
            "Contrast r": f"{fmt(contrast.r)} (bound {fmt(contrast.r_bound)}, "
                          f"{p_phrase(contrast.test.p_value, contrast.test.n_permutations)})"}


def sensitivity_frame(results: Results) -> pd.DataFrame:
    """The main call beside the call on the KDs the model predicts better than the baseline (the sensitivity row)."""
    routing, quality = results.routing, results.quality
    rows = [_call_row("all (main call)", len(results.effects.labels), routing.verdict, routing.evidence)]
    if quality is not None:
        rows.append(_call_row("better than baseline", len(quality.well_predicted), quality.sensitivity,
                              quality.sensitivity_evidence))
        for group, (call, evidence) in (quality.split_calls or {}).items():
            held = sum(kd in quality.held_out for kd in results.effects.responses.kd_names)
            rows.append(_call_row(f"{group} in training" if group == "seen" else f"{group} of training",
                                  held if group == "held out" else len(results.effects.labels) - held, call, evidence))
    return pd.DataFrame(rows)


def sensitivity_table(results: Results) -> Md:
    table = markdown_table(sensitivity_frame(results), [22, 4, 16, 30, 30], "lrlll")
    return Md(typeset(table))


def sensitivity_text(results: Results) -> Md:
    """The rule, and which KDs (by output cluster) the sensitivity call rests on."""
    quality = results.quality
    if quality is None:
        return Md("")
    table = results.effects.kd_table
    kept = table["kd"].isin(quality.well_predicted)
    counts = ", ".join(f"cluster {c}: {int(kept[table['cluster'] == c].sum())}/{int((table['cluster'] == c).sum())}"
                       for c in sorted(table["cluster"].unique()))
    return Md(f"The sensitivity row re-runs the routing statistics and the call on the KDs for which {RULE}, the "
              f"common routing direction re-estimated on them; it does not change the main call. The subset keeps, "
              f"per output cluster (0 = weak effect): {counts}.")


def quality_chart(results: Results, line: int = 0) -> alt.LayerChart | alt.Chart:
    """Per KD of `results.lines[line]` (the charts' convention, `present.charts`), prediction quality (pearson_delta
    against control) against effect size ‖ΔY‖, coloured by whether the model beats the baseline on it; the dashed line
    is the split-half ceiling of the mean over KDs. When nothing was scored (too few observed cells per KD, Part 0
    off), the reason in place of the points."""
    quality, effects = results.lines[line].quality, results.lines[line].effects
    if not _scored(quality):
        reason = quality.status if quality else "Part 0 not run"
        return alt.Chart(pd.DataFrame({"reason": [f"Not scored: {reason}"]})).mark_text(
            fontSize=12, color="#555").encode(text="reason:N").properties(width=460, height=40)
    table = quality.kd_table[quality.kd_table["reference"] == "control"].pivot(
        index="kd", columns="predictor", values="pearson_delta").reset_index()
    frame = table.merge(effects.kd_table[["kd", "cluster", "effect_norm"]], on="kd")
    frame["verdict"] = frame["kd"].isin(quality.well_predicted).map({True: "better than baseline",
                                                                     False: "not better than baseline"})
    frame["rank"] = frame["model"].rank(ascending=False, method="first")
    points = alt.Chart(frame).mark_circle(size=28, opacity=0.7).encode(
        x=alt.X("effect_norm:Q", title="predicted effect size ‖ΔY‖"),
        y=alt.Y("model:Q", title="pearson_delta, model vs observed (cell-eval)"),
        color=alt.Color("verdict:N", title=None, legend=alt.Legend(orient="bottom"),
                        scale=alt.Scale(domain=["better than baseline", "not better than baseline"],
                                        range=["#1b9e77", "#d95f02"])),
        tooltip=["kd", "cluster", alt.Tooltip("rank:Q", title="rank"), alt.Tooltip("model:Q", format=".3f"),
                 alt.Tooltip("baseline:Q", format=".3f"), alt.Tooltip("ceiling:Q", format=".3f"),
                 alt.Tooltip("effect_norm:Q", format=".3g")])
    ceiling = _values(quality, "ceiling", "control")
    rule = alt.Chart(pd.DataFrame({"y": [ceiling]})).mark_rule(strokeDash=[4, 3], color="#888").encode(y="y:Q")
    return (points + rule).properties(width=460, height=240)


def summary_line(results: Results) -> str:
    """The CLI's one line on Part 0."""
    quality = results.quality
    if quality is None:
        return "Part 0 (prediction quality): not run"
    if quality.status:
        return f"Part 0 (prediction quality): {quality.status}"
    call = quality.sensitivity.call if quality.sensitivity else "too few KDs"
    return (f"Part 0 (cell-eval {quality.cell_eval}): pearson_delta model {fmt(_values(quality, 'model', 'control'), 3)}"
            f" vs baseline {fmt(_values(quality, 'baseline', 'control'), 3)}, ceiling "
            f"{fmt(_values(quality, 'ceiling', 'control'), 3)} (perturbed mean: model "
            f"{fmt(_values(quality, 'model', 'perturbed mean'), 3)}, ceiling "
            f"{fmt(_values(quality, 'ceiling', 'perturbed mean'), 3)}); {len(quality.well_predicted)} KDs better than "
            f"baseline → call there: {call.upper()}"
            f"{'' if quality.held_out is not None else '; ' + SPLIT_UNKNOWN}; DE metrics "
            f"{'on' if quality.de_metrics else 'off'} ({quality.de_reason})")

"""The verdict section: its numbers (`VerdictNumbers`: the call and its words, the interventions' answer, and the
rule's thresholds as the criteria that used them carry them), the verdict table with its numbered notes, the
estimates the verdict chart draws, the caveat callout."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from ...results import Results
from .. import prose
from ..formatting import Md, fmt, fmt_p, markdown_table, studentized_p, typeset, typeset_record
from ..wording import FAMILY_LABELS, criterion, p_floor, words
from .methods import SINGLE_LINE


@dataclass(frozen=True)
class VerdictNumbers:
    """The call (its name, the phrase with its meaning, why), the interventions' answer (use, what it means, why,
    the two read together), and every threshold the rule used: α, the original plan's r, the smallest effect of
    interest (on the r scale and, for the contrast, in SD), the contrast's minimum in SD and as a share, the common
    share of a global readout, the KD-specific floor, the minimum reliability and the KD-specific share of the
    responses below which routing is one readout."""

    call: Md
    call_phrase: Md
    reason: Md
    use: Md
    use_meaning: Md
    use_reason: Md
    synthesis: Md
    alpha: Md
    r_threshold: Md
    equivalence_r: Md
    equivalence_contrast_sd: Md
    min_contrast: Md
    min_cluster_share: Md
    global_share: Md
    min_specific_share: Md
    min_reliability: Md
    min_response_share: Md


def verdict_numbers(results: Results) -> VerdictNumbers:
    routing = results.routing
    verdict = routing.verdict
    mantel, contrast = criterion(verdict, "mantel_specific"), criterion(verdict, "contrast_specific")
    shares, scale = criterion(verdict, "common_share").params, contrast.params["r_scale"]
    return typeset_record(
        VerdictNumbers,
        call=verdict.call, call_phrase=call_phrase(results), reason=prose.reason(routing), use=verdict.use,
        use_meaning=prose.use_meaning(routing), use_reason=prose.use_reason(results.interventions, verdict.use),
        synthesis=prose.synthesis(routing) or "the routing call and the interventions' answer are read side by side",
        alpha=f"{mantel.params['alpha']:g}", r_threshold=f"{mantel.params['min_r']:g}",
        equivalence_r=f"{mantel.margin:g}",
        equivalence_contrast_sd=fmt(contrast.margin / scale if scale > 0 else float("nan")),
        min_contrast=f"{contrast.params['min_contrast']:g}",
        min_cluster_share=f"{contrast.params['min_cluster_share']:g}", global_share=f"{shares['global_share']:g}",
        min_specific_share=f"{shares['min_specific_share']:g}",
        min_reliability=f"{shares['min_reliability']:g}",
        min_response_share=(f"{criterion(verdict, 'response_share').params['min_response_share']:g}"
                            if routing.evidence.response is not None else "not measured"))


def call_phrase(results: Results) -> Md:
    """'**positive**: Model B (internalized circuits) — the transformer uses …': the call, then its meaning with
    the call's own name dropped and at most one colon in the sentence."""
    verdict = results.routing.verdict
    meaning = re.sub(rf"^{re.escape(verdict.call)}\s*[:—–-]\s*", "", prose.meaning(results.routing))
    return Md(f"**{verdict.call}**: {meaning.replace(': ', ' — ', 1)}")


def caveat_callout(results: Results) -> Md:
    """The construct's caveat as a callout beneath a positive call (nothing otherwise)."""
    caveat = prose.caveat(results.routing, results.interventions)
    return Md(f"::: {{.callout-note}}\n{typeset(caveat)}\n:::" if caveat else "")


# The verdict table's columns: heading -> a criterion's cell. Everything else its words say (statistic, test, note)
# and its numbers (supports, bound, margin) is written beneath the table, numbered like the rows.
VERDICT_COLUMNS = {"Criterion": lambda c, said: said.name, "Family": lambda c, said: FAMILY_LABELS[c.family],
                   "Value": lambda c, said: fmt(c.value, 3), "Threshold": lambda c, said: said.threshold,
                   "p": lambda c, said: fmt_p(c.p_value, p_floor(c)), "Held": lambda c, said: "yes" if c.held else "no"}


def verdict_frame(results: Results) -> pd.DataFrame:
    """One row per verdict criterion, the columns of VERDICT_COLUMNS, formatted (each p with its own test's floor);
    row i is numbered (i)."""
    rows = []
    for number, c in enumerate(results.routing.verdict.criteria, 1):
        said = words(c)
        row = {heading: cell(c, said) for heading, cell in VERDICT_COLUMNS.items()}
        row["Criterion"] = f"{row['Criterion']} ({number})"
        rows.append(row)
    return pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))


def verdict_table(results: Results) -> Md:
    return markdown_table(verdict_frame(results), [27, 17, 8, 22, 9, 6], "llrlrl")


def verdict_notes(results: Results) -> Md:
    """Beneath the verdict table: for each numbered criterion, what it measures, the test, the model it supports,
    the note, its bound and margin."""
    lines = []
    for number, c in enumerate(results.routing.verdict.criteria, 1):
        said = words(c)
        extra = {"statistic": said.statistic, "test": said.test, "supports": c.supports, "note": said.note,
                 "bound": c.bound, "margin": c.margin}
        parts = [f"{k}: {_note_value(v)}" for k, v in extra.items() if v not in ("", None)]
        lines.append(typeset(f"({number}) " + "; ".join(parts) + "."))
    return Md("\n\n".join(lines))


def _note_value(value) -> str:
    """A criterion's field beneath the verdict table: a whole number (a count) without decimals."""
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else fmt(value, 3)
    return str(value)


def verdict_estimates(results: Results) -> pd.DataFrame:
    """The two deciding statistics of every analysed line with their one-sided 95% bounds, the two thresholds each is
    read against (the line's own criteria's), and its p with the model it supports (for `charts.verdict_forest`)."""
    rows = []
    for line in results.lines:
        ev = line.routing.evidence
        mantel, contrast = line.routing.verdict.deciding
        for name, test, unit, model_b, model_a, row in (
                ("Output similarity predicts routing", ev.mantel_pearson, "Pearson r(C_out, C_jac^spec)",
                 mantel.params["min_r"], mantel.margin, mantel),
                # the contrast's margin is the r-scale margin in SDs of this line's C_jac^spec (its pair share q)
                ("Same-cluster KDs share routing", ev.contrast.test, "same − cross mean C_jac^spec, in SD",
                 contrast.params["min_contrast"],
                 contrast.margin / ev.contrast.r_scale if ev.contrast.r_scale > 0 else float("nan"), contrast)):
            rows.append({"criterion": name, "line": line.cell_line or SINGLE_LINE, "statistic": test.statistic,
                         "lower": test.lower_bound, "upper": test.upper_bound, "model_b": model_b, "model_a": model_a,
                         "label": f"{studentized_p(test)}: {row.supports}", "unit": unit})
        r = ev.response
        if r is not None:  # what produces the responses: below the share of interest, one readout's
            minimum = criterion(line.routing.verdict, "response_share").params["min_response_share"]
            rows.append({"criterion": "KD-specific routing produces", "line": line.cell_line or SINGLE_LINE,
                         "statistic": r.specific_median, "lower": r.specific_low, "upper": r.specific_high,
                         "model_b": minimum, "model_a": minimum,
                         "label": f"{r.specific_median:.0%} of each response: "
                                  f"{'read' if r.specific_median >= minimum else 'global readout'}",
                         "unit": "median share of the response (95% cluster bootstrap)"})
    return pd.DataFrame(rows)

"""The article's numbers and the text that draws on several sections: `numbers(results)` gives every number the
prose of `report/index.qmd` quotes, as one typed record per section (`N.routing.pearson_r`, … — a misspelt name
fails in `tests/test_report.py`, which reads every inline expression of the article against these records), and
the abstract and the discussion.

The article types no result by hand: every number in its prose comes from these records through inline
expressions, every table and paragraph from a function of `present.sections`, every chart from `present.charts`.
Nothing here computes a statistic; it formats what the pipeline stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..results import Results
from . import prose
from .formatting import Md, typeset
from .quality import not_learned
from .sections.effects import EffectsNumbers, effects_numbers
from .sections.interventions import InterventionNumbers, intervention_numbers
from .sections.lines import across_sentence
from .sections.methods import MethodsNumbers, methods_numbers
from .sections.routing import RoutingNumbers, SvdNumbers, routing_numbers, svd_numbers
from .sections.verdict import VerdictNumbers, call_phrase, verdict_numbers


@dataclass(frozen=True)
class ReportNumbers:
    """Every number the article's prose quotes, formatted, one record per section (inline `{python} N.section.name`)."""

    methods: MethodsNumbers
    effects: EffectsNumbers
    routing: RoutingNumbers
    svd: SvdNumbers
    interventions: InterventionNumbers
    verdict: VerdictNumbers


def numbers(results: Results) -> ReportNumbers:
    return ReportNumbers(methods_numbers(results), effects_numbers(results), routing_numbers(results),
                         svd_numbers(results), intervention_numbers(results), verdict_numbers(results))


def abstract(results: Results) -> Md:
    """The abstract's result sentences: the common share, then what each deciding criterion showed on the
    KD-specific routing (effect, bound, p)."""
    stats, rule, sub = routing_numbers(results), verdict_numbers(results), intervention_numbers(results)
    mantel, contrast = results.routing.verdict.deciding
    produced = prose.produced_by(results.routing)
    share = (f"Across {methods_numbers(results).n_kds} knock-downs, routing common to every KD carries "
             f"{stats.common_share} of the Jacobian energy; the rest is KD-specific"
             + (f"; {produced}" if produced else ""))
    r_part = (f"Pearson r = {stats.pearson_r}, one-sided 95% upper bound {stats.r_bound}, studentized Mantel "
              f"{stats.mantel_p}")
    first = {"Model B": f"KD-specific routing similarity tracked output similarity ({r_part})",
             "Model A": f"KD-specific routing similarity tracked output similarity by less than the smallest effect "
                        f"of interest (bound {stats.r_bound} < {rule.equivalence_r}; {r_part})",
             "neither": f"whether KD-specific routing similarity tracks output similarity stays open ({r_part})"}[
        mantel.supports]
    c_part = (f"point-biserial r = {stats.contrast_r} ({stats.contrast_sd} SD), upper bound {stats.contrast_r_bound}, "
              f"studentized cluster-label permutation {stats.contrast_p}")
    second = {"Model B": f"same-output-cluster KDs shared KD-specific routing ({c_part})",
              "Model A": f"same-output-cluster KDs shared KD-specific routing by less than the smallest effect of "
                         f"interest (bound {stats.contrast_r_bound} < {rule.equivalence_r}; {c_part})",
              "neither": f"whether same-output-cluster KDs share KD-specific routing stays open ({c_part})"}[
        contrast.supports]
    verdict = f"The verdict is {call_phrase(results)}."
    if results.routing.verdict.use:
        verdict += (f" Asked directly, by substituting each KD's representation with its cluster's shared part, the "
                    f"encoder geometry is **{results.routing.verdict.use}** (cosine gain over random groups "
                    f"{sub.sub_gain}, {sub.sub_gain_claim}, {sub.sub_p}; at a median distance ratio {sub.sub_ratio}, "
                    f"the centroid costs {sub.sub_excess} more in cosine than a random move of its size, "
                    f"{sub.sub_excess_claim})"
                    + (f": {prose.synthesis(results.routing)}." if prose.synthesis(results.routing) else "."))
    caveat = " ".join(text for text in (prose.caveat(results.routing, results.interventions), not_learned(results))
                      if text)
    caveat = f" {caveat}" if caveat else ""
    lines = f" {across_sentence(results)}" if results.across is not None else ""
    return Md(typeset(f"{share}; {first}; {second}. {verdict}{caveat}{lines}"))


def discussion(results: Results) -> Md:
    """The opening paragraph of the discussion, worded for the call this run reached."""
    stats, rule, sub = routing_numbers(results), verdict_numbers(results), intervention_numbers(results)
    call = results.routing.verdict.call
    opening = {
        "cluster circuits": (f"Beyond the routing every KD shares ({stats.common_share} of the energy), KDs of one "
                             f"output cluster share routing that KDs of other clusters do not (r = {stats.pearson_r}, "
                             f"{stats.mantel_p}; {stats.contrast_sd} SD, {stats.contrast_p}). The two statistics read "
                             f"the same cluster blocks; within clusters r = {stats.within_r} ({stats.within_p}) says "
                             f"whether routing also follows outputs beyond them."),
        "graded routing": (f"KD-specific routing similarity tracks output similarity (r = {stats.pearson_r}, "
                           f"{stats.mantel_p}), but the outputs form no clusters beyond what points without clusters "
                           f"give. {prose.reason(results.routing)}"),
        "per-KD": (f"Most routing is KD-specific (common share {stats.common_share}), and its sharing within output "
                   f"clusters is smaller than the smallest effect of interest: bounds {stats.r_bound} and "
                   f"{stats.contrast_r_bound} below {rule.equivalence_r} (both on the r scale). This is evidence for "
                   f"Model A's per-KD routing; whether the encoder geometry is used at all needs intervention."),
        "global readout": f"{prose.reason(results.routing)}",
        "mixed": (f"The deciding criteria point in opposite directions (r = {stats.pearson_r}, {stats.mantel_p}; "
                  f"contrast r = {stats.contrast_r}, {stats.contrast_p}); @tbl-verdict shows which supports which."),
        "inconclusive": (f"The data do not decide: at least one criterion neither reaches its minimum effect with "
                         f"significance nor has an upper bound below the smallest effect of interest (r = "
                         f"{stats.pearson_r}, bound {stats.r_bound}; contrast r = {stats.contrast_r}, bound "
                         f"{stats.contrast_r_bound}). More KDs narrow the bounds."),
        "degenerate": (f"The responses are degenerate: {prose.reason(results.routing)}"),
        "unreliable": (f"The KD-specific routing does not reproduce across independent control-cell draws, so the "
                       f"deciding statistics (r = {stats.pearson_r}, {stats.mantel_p}; contrast r = "
                       f"{stats.contrast_r}, {stats.contrast_p}) read draw-to-draw noise, not routing. "
                       f"{stats.noise_floor} More control draws (n_draws) lower the floor."),
    }[call]
    if not_learned(results):
        opening += f" {not_learned(results)}"
    use = results.routing.verdict.use
    if use:
        reading = prose.synthesis(results.routing)
        opening += (f" Asked of the model directly, the encoder geometry is {use}: substituting each KD's "
                    f"representation with its cluster's shared part gains {sub.sub_gain} in cosine over random "
                    f"groups ({sub.sub_gain_claim}, {sub.sub_p}) and costs {sub.sub_excess} more than a random move of "
                    f"the same size (distance ratio {sub.sub_ratio}; {sub.sub_excess_claim})" + (f" — {reading}." if reading else "."))
    return Md(typeset(opening))

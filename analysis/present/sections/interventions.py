"""The interventions section: its numbers (`InterventionNumbers`: centroid substitution, interchange, steering, their
cost), the substitution paragraph and the steering paragraph."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...results import Results
from .. import prose
from ..formatting import Md, fmt, typeset, typeset_record
from ..wording import criterion


@dataclass(frozen=True)
class InterventionNumbers:
    """Centroid substitution (`sub_*`: KDs, clusters, cosines, median share, size, the gain with its bounds and the
    bound the answer quotes, p with its reference and floor; the distance control: distance ratio, the random moves'
    and the centroid's cosines, the excess cost with the bound the answer quotes; random_groups: label permutations;
    the margin the answer used), interchange (`swap_*`, "—" when not run),
    steering (steps, tolerance) and the cost (sets, seconds, share of the Jacobian stage's time)."""

    random_groups: Md
    substitution_margin: Md
    sub_n_kds: Md
    sub_n_clusters: Md
    sub_cosine: Md
    sub_random_cosine: Md
    sub_share: Md
    sub_random_share: Md
    sub_size: Md
    sub_gain: Md
    sub_bound: Md
    sub_lower: Md
    sub_gain_claim: Md
    sub_p: Md
    sub_ratio: Md
    sub_ratio_range: Md
    sub_matched_cosine: Md
    sub_probe_cosine: Md
    sub_excess: Md
    sub_excess_claim: Md
    intervention_sets: Md
    intervention_seconds: Md
    intervention_share: Md
    steering_steps: Md
    steering_tolerance: Md
    swap_rank: Md
    swap_accuracy: Md
    swap_null: Md
    swap_p: Md


def intervention_numbers(results: Results) -> InterventionNumbers:
    intervened = results.interventions
    s, i = intervened.substitution, intervened.interchange
    g, d = s.gain, s.distance
    gain_claim, excess_claim = prose.claim_bounds(s, results.routing.verdict.use)
    values = dict(
        random_groups=f"{s.random_groups}",
        substitution_margin=f"{criterion(results.routing.verdict, 'substitution').margin:g}",
        sub_n_kds=f"{s.n_kds}", sub_n_clusters=f"{g.n_clusters}", sub_cosine=fmt(s.cosine),
        sub_random_cosine=fmt(s.random_cosine), sub_share=fmt(s.share), sub_random_share=fmt(s.random_share),
        sub_size=fmt(s.size_ratio), sub_gain=fmt(g.estimate, 3), sub_bound=fmt(g.bound, 3), sub_lower=fmt(g.lower, 3),
        sub_gain_claim=gain_claim, sub_p=prose.inference_p(g) if g.n_clusters >= 2 else "p undefined",
        sub_ratio=fmt(d.ratio_median), sub_ratio_range=f"{fmt(d.ratio_low)}–{fmt(d.ratio_high)}",
        sub_matched_cosine=fmt(d.matched_cosine, 3), sub_probe_cosine=fmt(d.probe_cosine, 3),
        sub_excess=fmt(d.excess.estimate, 3), sub_excess_claim=excess_claim,
        intervention_sets=f"{intervened.n_sets:,}", intervention_seconds=f"{intervened.seconds:.0f}",
        intervention_share=f"{100 * intervened.seconds / max(results.routing.seconds['jacobians'], 1e-9):.0f}%",
    )
    steps = np.abs(results.steering.table["step"].to_numpy())
    values |= dict(steering_steps=f"±{steps.min():g} to ±{steps.max():g}",
                   steering_tolerance=f"{results.steering.tolerance:g}")
    if i is not None:
        values |= dict(swap_rank=f"{i.rank}", swap_accuracy=f"{100 * i.accuracy:.0f}%",
                       swap_null=f"{100 * i.null_accuracy:.0f}%",
                       swap_p=prose.inference_p(i.gain))
    else:
        values |= dict.fromkeys(("swap_rank", "swap_accuracy", "swap_null", "swap_p"), "—")
    return typeset_record(InterventionNumbers, **values)


def interventions_text(results: Results) -> Md:
    """The interventions' Results paragraph: what substitution and interchange showed, and their cost."""
    n = intervention_numbers(results)
    swap = (f" Swapping the cluster-shared component (rank {n.swap_rank}) for another cluster's moved the response "
            f"to that cluster for {n.swap_accuracy} of KDs, against {n.swap_null} for the same swap along random "
            f"directions ({n.swap_p})." if results.interventions.interchange is not None else "")
    return Md(typeset(
        f"{n.sub_n_kds} KDs in {n.sub_n_clusters} output clusters were substituted. At its "
        f"cluster's leave-one-out centroid, a KD's response pointed along its own ΔY with mean cosine {n.sub_cosine}, "
        f"against {n.sub_random_cosine} at random groups' centroids; the centroid reproduced a median share "
        f"{n.sub_share} of ΔY (random groups {n.sub_random_share}), at a median size ratio of {n.sub_size}. The gain "
        f"was {n.sub_gain} in cosine (cluster-bootstrap bounds {n.sub_lower} to {n.sub_bound}; {n.sub_p}). The "
        f"centroid lay a median {n.sub_ratio} (10–90%: {n.sub_ratio_range}) of a KD's offset from its embedding; random "
        f"moves of that size kept cosine {n.sub_matched_cosine} against {n.sub_probe_cosine} for the centroid, an "
        f"excess cost of {n.sub_excess}. With the gain's {n.sub_gain_claim} and the excess cost's "
        f"{n.sub_excess_claim}, the geometry is **{results.routing.verdict.use}**.{swap} The interventions took "
        f"{n.intervention_seconds} s "
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

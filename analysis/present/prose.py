"""Every sentence the package writes about a result: the call's meaning, its reason and caveat, the comparison across
cell lines, the prior-work rows. Words are made from the stored records when shown, never stored (a change of
wording re-renders; it does not recompute)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..results import (
    AcrossResult,
    ClusterInference,
    Criterion,
    InterchangeTest,
    InterventionsResult,
    PairedDifference,
    Results,
    RoutingResult,
    SubstitutionTest,
)
from .formatting import p_phrase, studentized_p
from .wording import criterion, p_floor, words

CALL_MEANINGS = {
    "cluster circuits": "cluster circuits (Model B) — beyond what every KD shares, KDs of one output cluster share "
                        "routing that KDs of other clusters do not",
    "graded routing": "graded routing — KD-specific routing similarity tracks output similarity, but the outputs form "
                      "no clusters beyond what points without clusters give: what any smooth readout of the "
                      "embedding produces, not routing shared within clusters",
    "per-KD": "per-KD routing (evidence for Model A) — most of the routing is KD-specific and its sharing within "
              "output clusters is smaller than the smallest effect of interest",
    "global readout": "global readout — one routing produces most of every KD's response, and what is KD-specific "
                      "is negligible or follows no output cluster",
    "mixed": "mixed — one deciding criterion shows cluster sharing of KD-specific routing, the other rules it out",
    "inconclusive": "inconclusive — the deciding criteria neither both show cluster sharing of KD-specific routing "
                    "nor both rule it out",
    "degenerate": "degenerate responses — every KD's predicted response points the same way; routing cannot be "
                  "compared with it",
    "unreliable": "unreliable — the KD-specific routing structure does not reproduce across independent control-cell "
                  "draws (its split-half reliability is below the stated minimum): it is mostly draw-to-draw noise, "
                  "read neither as cluster circuits nor as per-KD routing",
}
CAVEAT = ("A per-KD lookup that switches on when it reads each KD's own embedding gives C_jac = C_out ⊙ C_rep and "
          "the same cluster-circuits call: local Jacobians cannot distinguish it from shared routing.")
USE_MEANINGS = {
    "used": "a KD's response is carried by what its output cluster's embeddings share: the cluster's centroid "
            "reproduces it, an arbitrary group's does not, and dropping the KD's own part of the embedding costs no "
            "more than a random move of the same size",
    "partly used": "the cluster's shared embedding carries part of each KD's response (its centroid reproduces it "
                   "better than an arbitrary group's), and the model also reads each KD's own part of the embedding: "
                   "dropping it costs more than a random move of the same size",
    "not used": "replacing a KD's embedding by its cluster's shared part reproduces its response no better "
                "than a random group's (by less than the smallest gain of interest): the model reads KD-specific "
                "components",
    "inconclusive": "the substitution gain and its distance control do not together show use, partial use or its "
                    "absence (a bound on the wrong side of the smallest effect of interest)",
}
# The routing call and the interventions' answer, read together (the call alone is the Jacobians' answer).
SYNTHESES = {
    ("cluster circuits", "used"): "Model B: routing is shared within output clusters, and the model uses the "
                                  "cluster-shared part of the encoder geometry to produce the responses",
    ("cluster circuits", "partly used"): "routing is shared within output clusters and the cluster-shared geometry "
                                         "carries part of each response; the model reads each KD's own embedding "
                                         "beyond it",
    ("cluster circuits", "not used"): "a keyed lookup: routing similarity follows the clusters only because each "
                                      "KD's gate reads its own embedding; the cluster-shared geometry carries none of "
                                      "the response",
    ("per-KD", "not used"): "Model A: a per-KD lookup; neither routing nor the responses use the clusters' shared "
                            "geometry",
    ("per-KD", "used"): "routing is KD-specific, yet the cluster-shared part of the embeddings carries the responses "
                        "(a smooth per-KD readout of clustered embeddings)",
    ("global readout", "used"): "one global readout of the encoder geometry: every KD is routed alike and the "
                                "embeddings' cluster structure carries the responses",
    ("global readout", "not used"): "every KD is routed alike, but the cluster-shared geometry does not carry the "
                                    "responses",
}
# How a PairedDifference's direction reads, after "routing" (CLI) or "a KD's own routing was" (report).
DIRECTIONS = {"more": "more consistent between the lines than output",
              "less": "less consistent between the lines than output",
              "no difference": "neither more nor less consistent between the lines than output"}
# What a PairedDifference's cosines are called, by its measure: the KD-specific cosines (each line's common direction
# projected off, `stats.consistency`) answer; raw ones are shown beside them.
MEASURES = {"specific": "KD-specific", "raw": "raw"}


# ---------------------------------------------------------------- the verdict
def meaning(routing: RoutingResult) -> str:
    return CALL_MEANINGS[routing.verdict.call]


def reason(routing: RoutingResult) -> str:
    """Why the call is what it is: the share of routing common to every KD, then each deciding row with its effect,
    bound and p, then what separates cluster blocks from graded tracking (every threshold the rows' own)."""
    verdict, evidence = routing.verdict, routing.evidence
    d = evidence.decomposition
    shares = criterion(verdict, "common_share").params
    if verdict.call == "degenerate":
        s = evidence.spread
        return (f"C_out is nearly 1 for every pair of KDs (mean {s.out_mean:.5f}; KD-specific share of the responses "
                f"below {shares['min_specific_share']:g}): every KD is answered the same way, so routing is not read "
                "against it.")
    share = (f"The routing common to every KD carries {d.common_share:.2%} of the (unit-norm) Jacobian energy, the "
             f"KD-specific part {d.specific_share:.3g}")
    if verdict.call == "global readout" and verdict.degenerate_matrix == "C_jac":
        return (f"{share}, below the floor {shares['min_specific_share']:g}: every KD is routed the same way, and any "
                "structure in the KD-specific remainder is too small a share to read (its correlations are reported, "
                "not read).")
    produced = produced_by(routing)
    share = f"{share}; {produced}" if produced else share
    if verdict.call == "global readout" and verdict.degenerate_matrix == "response":
        minimum = criterion(verdict, "response_share").params["min_response_share"]
        return (f"{share} — below the share of interest {minimum:g}: one readout produces the responses, whatever "
                "the structure of the KD-specific remainder (its rows are reported, not read)."
                f"{noise_floor(routing)}")
    rows = "; ".join(_explain(row) for row in verdict.deciding)
    tail = ""
    read_response = produced and criterion(verdict, "response_share").params["read"]
    if verdict.call == "global readout":
        tail = f"; the common share is at least {shares['global_share']:g}, so routing is one global readout"
    elif verdict.call == "per-KD" and read_response:
        tail = "; the KD-specific routing produces a material share of the responses and follows no output cluster"
    elif verdict.call == "per-KD":
        tail = f"; the common share is below {shares['global_share']:g}, so most routing is KD-specific"
    elif verdict.call == "graded routing":
        x = evidence.output_clusters
        tail = (f"; but the outputs form no reproducible clusters (best silhouette {x.silhouette:.3f} against "
                f"{x.null_q95:.3f}, the 95th percentile of {x.n_draws} Gaussian draws with ΔY's covariance, "
                f"{p_phrase(x.p_value, x.n_draws)}; bootstrap ARI {x.stability:.2f}), so routing tracks output "
                f"similarity graded (r = {evidence.mantel_pearson.statistic:.2f}) — as any smooth readout of the "
                "embedding makes it — with no clusters to share routing within")
    elif verdict.call == "cluster circuits" and read_response:
        tail = (f"; so routing shared within output clusters adds a median "
                f"{evidence.response.specific_median:.0%} to each response the common readout produces")
    elif verdict.call == "unreliable":
        nf = evidence.noise_floor
        tail = (f"; but the KD-specific structure these rows read does not reproduce across control draws "
                f"(split-half reliability {nf.reliability_jac:.3g} < "
                f"{criterion(verdict, 'noise_floor').params['min_reliability']:g}), so they read "
                "draw-to-draw noise, not routing")
    return f"{share}; {rows}{tail}.{_within(routing)}{noise_floor(routing)}"


def produced_by(routing: RoutingResult) -> str:
    """What produces the responses, as one clause ("" when not measured): the common readout's and the KD-specific
    routing's median shares of the first-order response, or why they are not read."""
    r, verdict = routing.evidence.response, routing.verdict
    if r is None:
        return ""
    q = criterion(verdict, "response_share").params
    split = response_split(r)
    if not q["read"]:
        return (f"{split} explains a median {r.explained_median:.0%} of ΔY_k (below "
                f"{q['first_order_explained']:.0%}), so what produces the responses is not read from it")
    return (f"one global readout of the geometry produces a median {r.common_median:.0%} of each KD's response and "
            f"the KD-specific routing {r.specific_median:.0%} (90th percentile {r.specific_q90:.0%}; split through "
            f"{split}, which explains a median {r.explained_median:.0%} of ΔY_k)")


def response_split(r) -> str:
    """Which Jacobian splits the responses (`results.ResponseShares.path_points`), as a noun phrase."""
    if r.path_points:
        return f"the Jacobian averaged over {r.path_points} points of the path p_ctrl → p_k (Ĵ_k·Δp_k)"
    return "the first order J_k·Δp_k"


def noise_floor(routing: RoutingResult) -> str:
    """The noise floor in one sentence: each matrix's split-half reliability and the attenuation-corrected r, or
    that it was not measured (one control draw)."""
    nf = routing.evidence.noise_floor
    if nf is None:
        return (" Noise floor not measured: one control draw (n_draws = 1), so whether the KD-specific structure "
                "reproduces across draws is unknown.")
    corrected = "undefined" if nf.corrected_r != nf.corrected_r else f"{nf.corrected_r:.3f}"
    minimum = criterion(routing.verdict, "noise_floor").params["min_reliability"]
    return (f" Noise floor (control draws split {nf.half_draws[0]} + {nf.half_draws[1]}): C_jac^spec reproduces with "
            f"split-half reliability {nf.reliability_jac:.4g} (half r {nf.half_r_jac:.4g}, SE {nf.half_r_jac_se:.2g}; "
            f"minimum {minimum:g}), C_out with {nf.reliability_out:.4g}; the Mantel r corrected for "
            f"attenuation is {corrected}.")


def _within(routing: RoutingResult) -> str:
    """The separating row, said when a deciding row shows cluster sharing: the two deciding criteria read the same
    cluster blocks, the within-cluster Mantel does not."""
    evidence, verdict = routing.evidence, routing.verdict
    w = evidence.within_mantel
    if w is None or not (w.statistic == w.statistic) or not any(row.supports == "Model B" for row in verdict.deciding):
        return ""
    row = criterion(verdict, "within_mantel")
    alpha, margin = row.params["alpha"], row.margin
    p = studentized_p(w)
    if w.p_value < alpha and w.statistic > 0:
        what = "routing also tracks outputs within clusters (graded, not only by cluster)"
    elif w.upper_bound < margin:
        what = ("within clusters it does not track outputs beyond a block shared by the cluster (bound "
                f"{w.upper_bound:.3g} < {margin:g})")
    else:
        what = "whether routing tracks outputs within clusters stays open"
    between = ""
    cl = evidence.cluster_level
    if cl is not None and cl.r == cl.r:
        follows = "follows" if cl.p_value < alpha and cl.r > 0 else "is not shown to follow"
        between = (f" Between clusters, routing {follows} output similarity (r of the {cl.n_pairs} cluster-pair means "
                   f"= {cl.r:.3f}, {cl.n_clusters} clusters; {p_phrase(cl.p_value, cl.n_permutations)}).")
    return (f" The two deciding criteria read largely the same cluster blocks, so they are one piece of evidence, "
            f"not two; over same-cluster pairs only, r = {w.statistic:.3f} (bound {w.upper_bound:.3g}; {p}): "
            f"{what}.{between}")


def caveat(routing: RoutingResult, intervened: InterventionsResult | None = None) -> str:
    """The construct's blind spot, with every cluster-circuits call ("" otherwise): what the interventions showed of
    it when they decided, the caveat itself when they did not (or were not run)."""
    if routing.verdict.call != "cluster circuits":
        return ""
    r = routing.evidence.keyed_lookup_r
    here = f" (here r(C_jac, C_out ⊙ C_rep) = {r:.2f})" if r is not None else ""
    use = routing.verdict.use
    shown = substitution_phrase(intervened.substitution, use) if use else ""
    if use == "used":
        return (f"A per-KD lookup keyed on each KD's own embedding would give C_jac = C_out ⊙ C_rep{here} and the same "
                f"routing statistics; the intervention rules it out: {shown}.")
    if use == "not used":
        return (f"Keyed lookup detected: routing similarity follows the clusters as C_jac = C_out ⊙ C_rep predicts for "
                f"a lookup keyed on each KD's own embedding{here}, and the intervention shows the lookup: {shown}.")
    if use == "partly used":
        return (f"A per-KD lookup keyed on each KD's own embedding would give C_jac = C_out ⊙ C_rep{here}; the "
                f"intervention shows the cluster-shared part carrying part of the responses and the KD's own part "
                f"read beyond it: {shown}.")
    undecided = f" The intervention did not decide: {shown}." if use == "inconclusive" else ""
    return CAVEAT + (f" Here r(C_jac, C_out ⊙ C_rep) = {r:.2f}." if r is not None else "") + undecided


def inference_p(inference: ClusterInference) -> str:
    """A cluster inference's p with its reference, and its floor where p sits on it: 'p ≤ 0.025, the floor of 39
    label permutations'; 'p = 0.016, the smallest a sign flip over 6 clusters can give'."""
    if not inference.p_value == inference.p_value:
        return "p undefined"
    at_floor = np.isclose(inference.p_value, inference.p_floor, rtol=1e-9)
    if inference.p_reference == "label permutation":
        text = p_phrase(inference.p_value, inference.n_null)
        return text + (f", the floor of {inference.n_null} label permutations" if at_floor
                       else f" ({inference.n_null} label permutations)")
    if inference.exact:
        text = p_phrase(inference.p_value)
        return text + (f", the smallest a sign flip over {inference.n_clusters} clusters can give" if at_floor
                       else f" (sign flip over {inference.n_clusters} clusters)")
    return f"{p_phrase(inference.p_value, inference.n_null)} ({inference.n_null:,} sampled sign patterns)"


def _bounds(inference: ClusterInference, claim: str) -> str:
    """The bound a claim quotes: 'lower bound x' for an effect claimed ("present"), 'upper bound x' for one denied
    ("absent"), both otherwise (one-sided 95 %, cluster bootstrap)."""
    if claim == "present":
        return f"one-sided 95 % lower bound {inference.lower:.3g}"
    if claim == "absent":
        return f"one-sided 95 % upper bound {inference.bound:.3g}"
    return f"one-sided 95 % bounds {inference.lower:.3g} to {inference.bound:.3g}"


# For each answer, what it claims of the gain and of the excess cost ("present", "absent" or "" for neither).
_CLAIMS = {"used": ("present", "absent"), "partly used": ("present", "present"), "not used": ("absent", ""),
           "inconclusive": ("", "")}


def claim_bounds(test: SubstitutionTest, use: str) -> tuple[str, str]:
    """The bounds the answer `use` quotes, for the gain and for the distance control's excess cost: a claim that an
    effect is there quotes its lower bound, a claim that it is not its upper bound (`_bounds`)."""
    gain_claim, excess_claim = _CLAIMS[use]
    return _bounds(test.gain, gain_claim), _bounds(test.distance.excess, excess_claim)


def substitution_phrase(test: SubstitutionTest, use: str) -> str:
    """What centroid substitution and its distance control showed, with the bounds the answer `use` (`USES`) rests
    on: cosines, median share and size, the gain with its bound and p, then the distance ratio and the excess cost
    of the centroid move over same-size random moves."""
    g, d = test.gain, test.distance
    if g.n_clusters < 2:
        return (f"fewer than two output clusters of at least three KDs ({g.n_clusters}), so no cluster's centroid "
                "could be tested against random groups")
    gain_bounds, excess_bounds = claim_bounds(test, use)
    amplified = (f"; {d.amplified:.0%} of KDs sit closer than {d.probe_ratio:g} of their offset to their centroid, so "
                 f"their own part was first amplified (median λ {d.amplification:.2f}) to that distance"
                 if d.amplified > 0 else "")
    return (f"a KD's cluster's leave-one-out centroid, put in place of its embedding, reproduces its response with "
            f"cosine {test.cosine:.2f} (random groups of {g.n_null} label permutations {test.random_cosine:.2f}; "
            f"median share reproduced {test.share:.2f}, median size ratio {test.size_ratio:.2f}; {test.n_kds} KDs in "
            f"{g.n_clusters} clusters) — a gain of {g.estimate:.3f} in cosine ({gain_bounds}; "
            f"{inference_p(g)}). The centroid lies a median {d.ratio_median:.2f} (10–90 %: {d.ratio_low:.2f}–"
            f"{d.ratio_high:.2f}) of a KD's offset from its embedding{amplified}; there, random moves of the same size "
            f"keep cosine {d.matched_cosine:.3f} against {d.probe_cosine:.3f} for the centroid — an excess cost of "
            f"{d.excess.estimate:.3f} ({excess_bounds})")


def interchange_phrase(test: InterchangeTest) -> str:
    """What swapping the cluster-shared component showed."""
    p = inference_p(test.gain)
    return (f"swapping a KD's cluster-shared component (its projection on the span of the {test.rank} cluster "
            f"centroids) for another cluster's moves its response to that cluster in {test.accuracy:.0%} of "
            f"{test.n_kds} KDs ({test.null_accuracy:.0%} for the same swap along random directions; {p})")


def use_meaning(routing: RoutingResult) -> str:
    """Is the encoder geometry used? What the interventions' answer means, without its label ("" when not run)."""
    return USE_MEANINGS[routing.verdict.use] if routing.verdict.use else ""


def use_reason(intervened: InterventionsResult | None, use: str) -> str:
    """Why the interventions answered `use` (`Verdict.use`): the substitution, then the interchange ("" when not
    run)."""
    if intervened is None:
        return ""
    swap = f"; {interchange_phrase(intervened.interchange)}" if intervened.interchange is not None else ""
    return f"{substitution_phrase(intervened.substitution, use)}{swap}."


def synthesis(routing: RoutingResult) -> str:
    """The routing call and the interventions' answer read together ("" when no pairing has a reading of its own)."""
    return SYNTHESES.get((routing.verdict.call, routing.verdict.use), "")


def _explain(row: Criterion) -> str:
    """One deciding row: its effect, one-sided 95 % upper bound and p, and what they show (α and the permutation
    count are the row's own)."""
    alpha = row.params["alpha"]
    p = "p undefined" if row.p_value is None else p_phrase(row.p_value, p_floor(row))
    name = words(row).name
    name = name[0].lower() + name[1:]
    bound = "bound undefined" if row.bound is None else f"one-sided 95 % upper bound {row.bound:.3g}"
    effect = f"r = {row.value:.3f}"
    if row.supports == "Model B":
        return f"{name}: shown ({effect}, above its minimum; {bound}; {p})"
    if row.supports == "Model A":
        significant = row.p_value is not None and row.p_value < alpha
        return (f"{name}: smaller than the smallest effect of interest ({effect}; bound {row.bound:.3g} < "
                f"{row.margin:g}; {p}{', so an effect is present but below that size' if significant else ''})")
    detail = f"{effect}; {bound}, margin {row.margin:g}; {p}"
    if row.p_value is not None and row.p_value < alpha:
        return (f"{name}: present but not shown to be large enough, nor smaller than the smallest effect of interest "
                f"({detail}; cluster circuits need {words(row).threshold.split(';')[0].removeprefix('B: ')})")
    return f"{name}: neither shown nor smaller than the smallest effect of interest ({detail})"


# ---------------------------------------------------------------- across cell lines
def depth_text(routing: RoutingResult) -> str:
    """Where in depth routing takes the output clusters' structure: each block's reading by the call's own rule
    (`DepthRouting.reading`), then the output's, in one sentence; "" when no block Jacobians were stored."""
    if not routing.depth:
        return ""
    parts = []
    for depth in routing.depth:
        reading = depth.reading
        common = f"common share {depth.decomposition.common_share:.1%}"
        numbers = (common if reading == "common only" else
                   f"r = {depth.mantel.statistic:.2f}, {p_phrase(depth.mantel.p_value, depth.mantel.n_permutations)}; "
                   f"contrast {depth.contrast.test.statistic:.2f} SD; {common}")
        parts.append(f"block {depth.block}: {reading} ({numbers})")
    e = routing.evidence
    parts.append(f"output: r = {e.mantel_pearson.statistic:.2f}, contrast {e.contrast.test.statistic:.2f} SD")
    onset = next((d.block for d in routing.depth if d.reading == "cluster-shared"), None)
    where = (f"cluster-shared routing first appears at block {onset} of {len(routing.depth)}" if onset else
             "no backbone block shows cluster-shared routing by the call's rule: what the output shows is formed "
             "after the backbone (in the output head)" if routing.verdict.call == "cluster circuits" else
             "no backbone block shows cluster-shared routing by the call's rule")
    return f"{where} — " + "; ".join(parts)


def paired_p(test: PairedDifference) -> str:
    """'p = 0.016' (exact sign flip), 'p = 0.062, the floor of an exact sign flip over 5 clusters' (where no pattern
    but the observed one and its mirror is as extreme: fewer units could not say more) or 'p ≤ 1e-4' (sampled
    patterns at their floor)."""
    text = p_phrase(test.p_value, None if test.exact else test.n_sign_patterns)
    return f"{text}, the floor of an exact sign flip over {test.n_units} clusters" if test.exact and test.at_floor else text


def describe_pair(table: pd.DataFrame, tests: tuple) -> str:
    """One sentence on one pair of lines: median raw cosines with their baselines, the KD-specific ones, and each
    paired comparison."""
    parts = []
    for test in tests:
        kind = "exact" if test.exact else f"{test.n_sign_patterns:,} sampled patterns"
        parts.append(f"{MEASURES[test.measure]} cos J − cos ΔY = {test.estimate:+.2f} ({test.confidence:.0%} cluster-bootstrap CI "
                     f"{test.ci_low:+.2f} to {test.ci_high:+.2f}; sign-flip over {test.n_units} clusters, {kind}, "
                     f"{paired_p(test)}): routing {DIRECTIONS[test.direction]}")
    first = tests[0]
    return (f"{first.line_a} vs {first.line_b} ({first.n_kds} KDs): median cos ΔY {table['cos_output'].median():.2f} "
            f"(other KDs {table['baseline_output'].median():.2f}), median cos J {table['cos_jacobian'].median():.2f} "
            f"(other KDs {table['baseline_jacobian'].median():.2f}); KD-specific (off each line's common direction): "
            f"median cos ΔY {table['specific_output'].median():.2f}, cos J {table['specific_jacobian'].median():.2f}; "
            + "; ".join(parts))


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

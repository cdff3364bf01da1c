"""The catalogue of the verdict's words: each criterion (`results.Criterion.id`, made by `stats.verdict`) worded from
the numbers it carries, its family's label, and how a test's p was referred. Every printed threshold, α and
permutation count comes from the criterion's own `params` (what the test used), never from the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..results import Criterion, StudentizedTest, Verdict

# Criterion.family -> the label the verdict table and the CLI show.
FAMILY_LABELS = {"decides": "decides", "decides_share": "decides (share)", "decides_clusters": "decides (clusters)", "decides_use": "decides (use)",
                 "separates": "separates", "noise_floor": "noise floor", "raw": "raw (reported)",
                 "interventions": "interventions (reported)", "seed": "seed (reported)", "reported": "reported",
                 "svd": "SVD (reported)"}


def null_phrase(reference: str, n_permutations: int, permuted: str) -> str:
    """How a studentized p was referred, for prose: "9,999 `permuted`" (e.g. "KD-label permutations"), "normal
    reference", or "normal reference, near α 199 `permuted`" (`results.StudentizedTest.reference`)."""
    if reference == "normal":
        return "normal reference"
    near = "normal reference, near α " if reference == "normal+permutation" else ""
    return f"{near}{n_permutations:,} {permuted}"


def studentized_null_phrase(test: StudentizedTest, permuted: str) -> str:
    """`null_phrase` of a `results.StudentizedTest`."""
    return null_phrase(test.reference, test.n_permutations, permuted)


def criterion(verdict: Verdict, criterion_id: str) -> Criterion:
    """The verdict's row `criterion_id` (`stats.verdict.CRITERIA`)."""
    return next(c for c in verdict.criteria if c.id == criterion_id)


def p_floor(row: Criterion) -> int | None:
    """The permutation count behind a criterion's p (its floor is 1/(n + 1)); None when its p has no such floor."""
    return row.params.get("n_permutations") or None


@dataclass(frozen=True)
class CriterionWords:
    """A criterion in words: its name, what its statistic is, its test, the threshold it is read against, a note."""

    name: str
    statistic: str
    test: str
    threshold: str
    note: str = ""


def _null(q: dict, permuted: str) -> str:
    return null_phrase(q["reference"], q["n_permutations"], permuted)


def _mantel_specific(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords(
        "Output similarity predicts KD-specific routing similarity", "Pearson r(C_out, C_jac^spec)",
        f"studentized Mantel ({_null(q, 'KD-label permutations')}); one-sided 95 % jackknife bound",
        f"B: r > {q['min_r']}, p < {q['alpha']}; ruled out: bound < {c.margin}",
        f"95 % KD-bootstrap CI [{q['ci_low']:.3f}, {q['ci_high']:.3f}]; Spearman {q['spearman']:.3f}")


def _contrast_specific(c: Criterion, q: dict) -> CriterionWords:
    scale = q["r_scale"]
    return CriterionWords(
        "Same-cluster KDs share KD-specific routing",
        "point-biserial r(C_jac^spec, same cluster) = (same − cross)/SD × √(q(1−q))",
        f"studentized same − cross contrast ({_null(q, 'cluster-label permutations')}); one-sided 95 % jackknife "
        "bound",
        f"B: ≥ {q['min_contrast']} SD (r ≥ {q['min_contrast'] * scale:.3g} here) and same − cross ≥ "
        f"{q['min_cluster_share']} (share of KD-specific energy), p < {q['alpha']}; ruled out: bound < "
        f"{c.margin} (= {c.margin / scale if scale > 0 else float('nan'):.3g} SD here)",
        f"{q['sd']:.2f} SD (bound {q['sd_bound']:.2f} SD); same {q['mean_same']:.3g} vs cross "
        f"{q['mean_cross']:.3g} (SD {q['spread']:.3g}); q = {q['pair_share']:.3f}")


def _common_share(c: Criterion, q: dict) -> CriterionWords:
    # The rule first, the value in brackets: "share 0.0924 < 0.0001" would state an inequality the numbers contradict.
    return CriterionWords(
        "Routing common to every KD", "share of Σ‖u_k‖² along the mean unit Jacobian (u_k = J_k/‖J_k‖)",
        "exact, from the K × K Gram (projection onto the direction of ū)",
        f"global readout: KD-specific share < {q['min_specific_share']:g} (here {q['specific_share']:.3g}), or "
        f"cluster sharing ruled out and common ≥ {q['global_share']:g}",
        f"KD-specific share {q['specific_share']:.3g}; C_jac^spec mean {q['spec_mean']:.3g}, SD {q['spec_sd']:.3g}")


def _response_share(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords(
        "What produces the responses", "median ‖J_k^⊥·Δp_k‖ / ‖J_k·Δp_k‖: the KD-specific routing's share of the "
        "response",
        (f"Jacobians averaged over {q['path_points']} points of the path p_ctrl → p_k" if q["path_points"] else
         "first order, local Jacobians") + "; split along the common direction ĝ",
        f"global readout: < {q['min_response_share']:g}; read when the split explains ≥ "
        f"{q['first_order_explained']:g} of ΔY_k (here {q['explained_median']:.2f}"
        f"{'' if q['read'] else ': not read'})",
        f"the common routing produces a median {q['common_median']:.2f}; KD-specific 90th percentile "
        f"{q['specific_q90']:.2f}; {q['n_kds']} KDs")


def _output_clusters(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords(
        "The outputs cluster at all", "best mean silhouette of the output clustering (cosine of ΔY)",
        f"against {q['n_draws']} draws from a Gaussian with ΔY's mean and covariance, clustered alike; one-sided",
        f"clusters exist: p < {q['alpha']} (else graded routing, not cluster circuits)",
        f"reference median {q['null_median']:.3f}, 95th percentile {q['null_q95']:.3f}; {q['n_kds']} KDs; bootstrap "
        f"ARI median {q['stability']:.2f}")


def _within_mantel(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords(
        "Routing tracks output within clusters (beyond the cluster blocks)",
        "Pearson r(C_out, C_jac^spec), same-cluster pairs",
        f"studentized Mantel within clusters ({_null(q, 'label permutations within clusters')}); one-sided",
        f"graded: p < {q['alpha']}; block only: bound < {c.margin}")


def _cluster_level(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords(
        "Routing between clusters follows output between clusters",
        "Pearson r of between-cluster means of C_out and C_jac^spec",
        f"cluster identities permuted ({q['n_permutations']}); {q['n_clusters']} clusters, {q['n_pairs']} cluster "
        "pairs; one-sided", f"p < {q['alpha']}")


def _noise_floor(c: Criterion, q: dict) -> CriterionWords:
    first, second = q["half_draws"]
    return CriterionWords(
        "KD-specific routing reproduces across control draws",
        "split-half reliability of C_jac^spec (Spearman–Brown)",
        f"two halves of the control draws ({first} + {second}); delete-one-KD jackknife SE",
        f"unreliable: < {q['min_reliability']:g}",
        f"half r {q['half_r_jac']:.4g} (SE {q['half_r_jac_se']:.2g}); C_out reliability {q['reliability_out']:.4g}; "
        f"Mantel r corrected for attenuation {q['corrected_r']:.3f}")


def _mantel_raw(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords("Output similarity predicts raw routing similarity", "Pearson r(C_out, C_jac)",
                          f"studentized Mantel ({_null(q, 'KD-label permutations')})", f"p < {q['alpha']}")


def _contrast_raw(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords("Same-cluster KDs share raw routing", "point-biserial r(C_jac, same cluster)",
                          f"studentized same − cross contrast ({_null(q, 'cluster-label permutations')})",
                          f"p < {q['alpha']}",
                          f"{q['sd']:.2f} SD; same {q['mean_same']:.4g} vs cross {q['mean_cross']:.4g}")


def _num(value, spec: str) -> str:
    """A number of a row's params in `spec`, or "undefined" where the statistic was not defined (None or NaN: e.g.
    bounds with fewer than two substituted clusters)."""
    return "undefined" if value is None or value != value else format(value, spec)


def _substitution(c: Criterion, q: dict) -> CriterionWords:
    m = c.margin
    return CriterionWords(
        "A cluster's shared embedding reproduces its KDs' responses",
        "mean cos(ΔY(cluster centroid), ΔY_k) − mean cos(ΔY(random-group centroid), ΔY_k)",
        f"leave-one-out centroid substitution through the model's forward; random groups from {q['random_groups']} "
        f"joint label permutations, which also refer p ({q['n_clusters']} clusters; floor "
        f"{_num(q['p_floor'], '.2g')}); one-sided 95 % cluster-bootstrap bounds ({q['n_bootstrap']} resamples)",
        f"used: gain ≥ {m:g}, p < {q['alpha']}; not used: upper bound < {m:g}",
        f"{q['n_kds']} KDs; bounds {_num(q['lower'], '.3f')} to {_num(q['upper'], '.3f')}; cos "
        f"{_num(q['cosine'], '.3f')} (random groups {_num(q['random_cosine'], '.3f')}); median share reproduced "
        f"{_num(q['share'], '.3f')} (random {_num(q['random_share'], '.3f')}); median size ratio "
        f"{_num(q['size_ratio'], '.2f')}; median distance ratio {_num(q['distance_ratio'], '.2f')}")


def _distance_control(c: Criterion, q: dict) -> CriterionWords:
    m = c.margin
    amplified = (f"; {_num(q['amplified'], '.0%')} of KDs amplified to distance ratio {q['probe_ratio']:g} (median λ "
                 f"{_num(q['amplification'], '.2f')})" if q["amplified"] else "")
    return CriterionWords(
        "Dropping a KD's own part of the embedding costs no more than a random move of its size",
        "mean cos(ΔY(same-size random move), ΔY(p̃_k)) − cos(ΔY(cluster centroid), ΔY(p̃_k))",
        f"{q['matched_moves']} random moves per KD in the span of the KDs' offsets, as far from p̃_k as the "
        f"centroid (p̃_k: the KD's embedding, its own part amplified where the distance ratio is below "
        f"{q['probe_ratio']:g}); one-sided 95 % cluster-bootstrap bounds ({q['n_bootstrap']} resamples)",
        f"used: upper bound < {m:g}; read beyond the shared part (partly used): excess ≥ {m:g}, lower bound > 0",
        f"bounds {_num(q['lower'], '.3f')} to {_num(q['upper'], '.3f')}; random moves {_num(q['matched_cosine'], '.3f')} vs centroid "
        f"{_num(q['probe_cosine'], '.3f')}; distance ratio median {_num(q['ratio_median'], '.2f')} (10–90 %: {_num(q['ratio_low'], '.2f')}–"
        f"{_num(q['ratio_high'], '.2f')}){amplified}")


def _interchange(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords(
        "Swapping the cluster-shared component moves the response to the other cluster",
        "interchange accuracy − random-subspace swap",
        f"projection on the span of {q['rank']} cluster centroids swapped; one-sided cluster sign-flip",
        f"p < {q['alpha']}",
        f"accuracy {q['accuracy']:.2f} vs {q['null_accuracy']:.2f} for a random subspace of the same rank "
        f"({q['n_kds']} KDs)")


def _seed_contrast(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords("Same-cluster KDs share routing", "mean C_jac same − cross",
                          "Wilcoxon rank-sum on pairs (anti-conservative: pairs share KDs)",
                          f"p < {q['alpha']}, same > cross", f"AUC {q['auc']:.3f}")


def _seed_mantel(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords("Output similarity predicts routing similarity", "Pearson r(C_out, C_jac)",
                          "none (pair-level)", f"r > {q['min_r']}")


def _partial_mantel(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords("Routing adds to the encoder geometry", "partial Mantel r(C_jac, C_out | C_rep)",
                          f"studentized partial Mantel ({_null(q, 'KD-label permutations')}); not valid under a "
                          "shared cause, never decides", f"p < {q['alpha']}")


def _svd_seed(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords("SVD axes are biologically interpretable (seed's literal test)", "max FDR of routing axis-1 "
                          "gene and KD enrichment", "prerank GSEA of gene loadings and of KD scores (BH-FDR), any terms",
                          f"both FDR < {q['fdr']}",
                          f"genes: {q['gene_term']}; KDs: {q['kd_term']} (NES {q['kd_nes']:+.2f})")


def axes_note(axes: list[dict]) -> str:
    """The interpretable routing axes (`svd_both_sides`'s params["axes"]), for that row's note and the SVD prose."""
    if not axes:
        return "no axis shows one pathway on both sides"
    return "; ".join(f"axis {a['axis']}: {a['term']} (KD NES {a['kd_nes']:+.2f}, genes "
                     f"{'up' if a['gene_nes'] > 0 else 'down'})" for a in axes)


def _svd_both_sides(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords("SVD axes show the same biology on both sides",
                          f"interpretable axes among the first {q['n_axes']}",
                          "one pathway enriched in the gene loadings and, at the high-score end, in the KD scores "
                          "(routing axes: KD-specific part of the unit-norm Jacobians)", f"≥ 1 axis, FDR < {q['fdr']}",
                          axes_note(q["axes"]))


def _svd_beyond_output(c: Criterion, q: dict) -> CriterionWords:
    return CriterionWords("Routing axes carry what output axes do not", "largest principal angle to ΔY's axes (cos)",
                          "gene loadings of the routing SVD vs the SVD of unit-norm ΔY",
                          f"an interpretable axis with overlap < {q['overlap_threshold']}",
                          f"{q['n_beyond_output']} interpretable routing axes outside ΔY's axes; ΔY's own SVD has "
                          f"{q['n_output_interpretable']} interpretable axes")


CATALOGUE = {"mantel_specific": _mantel_specific, "contrast_specific": _contrast_specific,
             "response_share": _response_share, "common_share": _common_share,
             "output_clusters": _output_clusters, "within_mantel": _within_mantel, "cluster_level": _cluster_level,
             "noise_floor": _noise_floor, "mantel_raw": _mantel_raw, "contrast_raw": _contrast_raw,
             "substitution": _substitution, "distance_control": _distance_control, "interchange": _interchange, "seed_contrast": _seed_contrast,
             "seed_mantel": _seed_mantel, "partial_mantel": _partial_mantel, "svd_seed": _svd_seed,
             "svd_both_sides": _svd_both_sides, "svd_beyond_output": _svd_beyond_output}


def words(criterion: Criterion) -> CriterionWords:
    """`criterion` in words, from its own numbers."""
    return CATALOGUE[criterion.id](criterion, criterion.params)

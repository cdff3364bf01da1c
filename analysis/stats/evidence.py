"""The evidence the verdict reads: the routing tests assembled over the strong-effect KDs, at the output
(`core_evidence`, `routing_evidence`) and block by block in depth (`routing_by_depth`), with the descriptive
`spread`.

Routing is split first (`stats.decomposition`); the Mantel family (`stats.mantel`) and the contrast
(`stats.contrast`) then run under one reference for the whole set of KDs (`stats.nulls.reference_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..results import DepthRouting, RoutingEvidence, Spread
from .contrast import cluster_contrast
from .decomposition import decompose
from .gram import JacobianShards, cosine_from_gram, stream_gram
from .mantel import cluster_level, kd_bootstrap_ci, mantel, partial_mantel, within_cluster_mantel
from .nulls import NORMAL_REFERENCE_KDS, borderline_rule, reference_for, referred_permutations
from .pairs import block_reader, blocked_pearson, offdiagonal_moments, pearson


def spread(c_out: np.ndarray, c_jac: np.ndarray) -> Spread:
    (jac_mean, jac_sd), (out_mean, out_sd) = offdiagonal_moments(c_jac), offdiagonal_moments(c_out)
    return Spread(jac_sd, jac_mean, out_sd, out_mean)


def strong_effect_kds(labels: np.ndarray) -> np.ndarray:
    """Indices of the KDs with a strong effect (clusters ≥ 1; group 0 is `clustering`'s "weak or no effect").

    Every statistic that reads C_out reads these KDs only, as the cluster contrast always has: a weak KD's ΔY has no
    direction worth clustering, so its C_out entries are noise, and a Mantel over them asks whether routing follows
    noise. It matters at genome scale: in `datasets.screen`'s 10,000-KD world the weak tail (41 % of the KDs) routes
    every KD through the same units while its small outputs point anywhere, and r over all KDs was 0.10–0.15 against
    0.89 over the strong ones (the call: inconclusive or mixed on planted cluster circuits).
    """
    return np.flatnonzero(labels > 0)


def on_kds(matrix: np.ndarray, index: np.ndarray) -> np.ndarray:
    """`matrix` [K, K] restricted to the KDs `index` [K'] (itself when that is every KD: no copy)."""
    return matrix if len(index) == len(matrix) else matrix[np.ix_(index, index)]


def core_evidence(c_out: np.ndarray, c_jac: np.ndarray, labels: np.ndarray, n_permutations: int, n_bootstrap: int,
                  seed: int, gram: np.ndarray | None = None,
                  normal_reference_kds: int = NORMAL_REFERENCE_KDS) -> RoutingEvidence:
    """The statistics the call rests on (what the calibration replicates compute).

    Routing is first split into its common and KD-specific parts over every KD (`decompose`, from `gram`, the
    Jacobians' Gram; None: `c_jac` is taken as the Gram of unit-norm Jacobians); the deciding Mantel, contrast and the
    within-cluster Mantel are computed on the KD-specific matrix C_jac^spec, the raw C_jac's Mantel and contrast beside
    them, all over the KDs with a strong effect (`strong_effect_kds`). The studentized tests permute KD labels below
    `normal_reference_kds` strong KDs and use the normal reference from there on (`reference_for`; a p near α
    decided by `referred_permutations` permutations), except the
    within-cluster Mantel, which permutes within cluster blocks at every K (its normal reference failed the agreement
    study; see `within_cluster_mantel`). Memory: the inputs, C_jac^spec, the three restricted to the strong KDs when
    some are weak, and for the Spearman Mantel two rank matrices while it runs (K × K float64 each: 800 MB at
    K = 10,000), plus row blocks of `pairs.BLOCK_BYTES` and the rank-sum's pair vectors.
    """
    return _evidence(c_out, c_jac, None, labels, n_permutations, n_bootstrap, seed, gram, normal_reference_kds)


def routing_evidence(c_out: np.ndarray, c_jac: np.ndarray, c_rep: np.ndarray, labels: np.ndarray, n_permutations: int,
                     n_bootstrap: int, seed: int, gram: np.ndarray | None = None,
                     normal_reference_kds: int = NORMAL_REFERENCE_KDS) -> RoutingEvidence:
    """`core_evidence` plus the descriptive statistics that involve the encoder geometry C_rep (over the same
    strong-effect KDs; C_rep restricted in place of C_jac^spec once that is done with)."""
    return _evidence(c_out, c_jac, c_rep, labels, n_permutations, n_bootstrap, seed, gram, normal_reference_kds)


def _evidence(c_out: np.ndarray, c_jac: np.ndarray, c_rep: np.ndarray | None, labels: np.ndarray, n_permutations: int,
              n_bootstrap: int, seed: int, gram: np.ndarray | None, normal_reference_kds: int) -> RoutingEvidence:
    """`core_evidence`, and with `c_rep` (not None) `routing_evidence`'s statistics of the encoder geometry."""
    decomposition, c_spec = decompose(c_jac if gram is None else gram)
    n_kds, strong = len(labels), strong_effect_kds(labels)
    n_strong = len(strong)
    out, spec, jac = on_kds(c_out, strong), on_kds(c_spec, strong), on_kds(c_jac, strong)
    reference = reference_for(n_strong, normal_reference_kds)
    n_referred = referred_permutations(reference, n_permutations)
    borderline, borderline_permutations = borderline_rule(reference, n_permutations)
    evidence = RoutingEvidence(
        n_kds=int(n_kds), n_strong=int(n_strong), n_pairs=int(n_strong * (n_strong - 1) // 2),
        mantel_pearson=mantel(out, spec, n_referred, seed, "pearson", reference),
        mantel_spearman=mantel(out, spec, n_referred, seed, "spearman", reference),
        pearson_ci=kd_bootstrap_ci(out, spec, n_bootstrap, seed) if n_bootstrap else (float("nan"),) * 2,
        contrast=cluster_contrast(c_spec, labels, n_referred, seed, reference),
        spread=spread(c_out, c_jac),
        decomposition=decomposition,
        within_mantel=within_cluster_mantel(c_out, c_spec, labels, n_permutations, seed),
        raw_mantel=mantel(out, jac, n_referred, seed, "pearson", reference),
        raw_contrast=cluster_contrast(c_jac, labels, n_referred, seed, reference),
        cluster_level=cluster_level(c_out, c_spec, labels, n_permutations, seed),
        borderline=borderline, borderline_permutations=borderline_permutations)
    if c_rep is None:
        return evidence
    del spec, c_spec  # C_jac^spec is done with; C_rep's restriction takes its place
    rep = on_kds(c_rep, strong)
    read_out, read_rep = block_reader(out), block_reader(rep)
    return replace(evidence, partial_mantel=partial_mantel(jac, out, rep, n_referred, seed, reference),
                   mantel_out_rep=mantel(out, rep, n_referred, seed, "pearson", reference),
                   keyed_lookup_r=blocked_pearson(block_reader(jac), lambda rows: read_out(rows) * read_rep(rows),
                                                  n_strong))


def routing_by_depth(blocks: Sequence[JacobianShards], c_out: np.ndarray, labels: np.ndarray, n_permutations: int,
                     seed: int, reference: str = "permutation") -> tuple[DepthRouting, ...]:
    """Where in depth routing takes the output clusters' structure: for each backbone block's Jacobians (`blocks`,
    in depth order, [D, H] per KD), C_jac^(ℓ) from their streamed Gram, split into common and KD-specific parts as
    the output's (`decompose`, over every KD), and the deciding Mantel and contrast on the KD-specific part over the
    strong-effect KDs (`strong_effect_kds`; `reference`: as the output's, `reference_for`).

    One Gram [K, K] alive at a time. A block whose Jacobians are the same for every KD (e.g. an identity block on
    the residual stream: ∂h/∂p = I) has common share 1 and an empty KD-specific part: its r and p are NaN.
    """
    found = []
    strong = strong_effect_kds(labels)
    out = on_kds(c_out, strong)
    n_referred = referred_permutations(reference, n_permutations)
    for depth, block in enumerate(blocks, start=1):
        gram = stream_gram(block)
        decomposition, specific = decompose(gram)
        with np.errstate(invalid="ignore", divide="ignore"):
            found.append(DepthRouting(depth, decomposition,
                                      mantel(out, on_kds(specific, strong), n_referred, seed, reference=reference),
                                      cluster_contrast(specific, labels, n_referred, seed, reference=reference),
                                      pearson(out, on_kds(cosine_from_gram(gram), strong))))
    return tuple(found)

"""Worlds with a known answer for the routing statistics, and how often the decision rule errs in them.

Each world draws (ΔY [K, D], C_out, C_jac, C_rep, cluster labels) with a seeded generator. Null worlds have routing
that does *not* follow outputs — a valid test feeding the call rejects ≈ α there and the call must not say
"positive"; alternatives plant shared routing of a known strength, where the call must not say "negative".
Cluster labels always come from `clustering.cluster_kds` on ΔY, as in the pipeline.

Null worlds:
- "independent": J_k = a_k·g + e_k with log-normal hub weights a_k: routing independent of outputs, pairs that
  share a KD dependent (the pair-level rank-sum test is anti-conservative here).
- "lookup": Model A's per-KD lookup J_k = ΔY_k ⊗ u_k, u_k iid: C_jac = C_out ⊙ cos(u). Means equal, spread grows
  with |C_out|: uncorrelated but not independent, the case a plain permutation test gets wrong. Geometries:
  "lookup-tight" (tight output clusters), "lookup-singletons" (half the KDs in no cluster), "lookup-hetero"
  (KD-specific routing noise of very unequal size), and "lookup-K20" / "lookup-K120" for the KD count.
- "shared-cause": ΔY and J both functions of pert_repr plus independent noise (independent given C_rep):
  the partial Mantel r(C_jac, C_out | C_rep) has no effect to find.

Alternatives:
- "sharing-r0.1", "sharing-r0.2": J_k = √w·(module routing) + √(1−w)·(KD-specific routing): routing partly
  follows the output modules, with a true Mantel r just above the smallest effect of interest (0.1) or near 0.2 —
  where "per-KD" would be a false call; the mean r is printed beside the call rates.

Worlds with a common component (issue 18), unit-norm J_k in ROUTING_WORLD_DIM dimensions:
- "common-cluster" (K = 60): u_k = √c·g + √((1−c)/2)·(module routing) + √((1−c)/2)·(own routing), the common
  share c drawn uniformly in [0.95, 0.995] per replicate (mean C_jac ≈ 0.97–0.997): cluster circuits on top of a
  global readout. Expected: "cluster circuits"; false: "global readout", "per-KD", "mixed".
- "identical-noise", "identical-noise-K116": u_k ∝ g + σ·e_k, e_k iid (mean C_jac 0.98): one routing for every
  KD up to noise. Expected: "global readout" (or "inconclusive"); false: "per-KD", "cluster circuits", "mixed".
- "identical-noise-modules": the same with the noise level σ_m shared within each output module (log-normal
  across modules, mean C_jac ≈ 0.98): the noise's size follows the modules. Same expectations.

Worlds with two halves of control draws (the noise floor, `stats.reliability`), K = 60: each half has its own ΔY
(the module centroids plus half-specific noise) and its own Jacobians; the full-data ones are the halves' mean.
- "draw-noise": u_k^(h) = √c·g + √(1−c)·e_k^(h), c = 0.3, e_k^(h) drawn afresh in each half: KD-specific routing
  that is pure draw-to-draw noise. Expected: "unreliable"; false: "cluster circuits", "per-KD", "mixed".
- "draw-cluster": the common-cluster world's routing (c in [0.95, 0.995]) plus half-specific noise of a fifth of
  the KD-specific energy: reliable cluster circuits. Expected: "cluster circuits"; false: "unreliable", "per-KD",
  "global readout", "mixed".
- "draw-per-KD": u_k = √c·g + √(1−c)·own_k, c = 0.3, plus half-specific noise of a fifth of the KD-specific
  energy: reliable per-KD routing (its chance overlaps reproduce). Expected "per-KD" (or "inconclusive" where the
  bounds are wide); false: "unreliable", "cluster circuits", "mixed".

Worlds with a weak tail (issue 21: a genome-wide screen is mostly weak KDs), K = 80, 40 % of the KDs with ΔY of a
twentieth of the modules' scale (group 0 of `cluster_kds`): the Mantel statistics read the strong KDs only
(`evidence.strong_effect_kds`).
- "weak-tail-lookup": Model A's lookup for every KD. A null; false: "cluster circuits".
- "weak-tail-cluster": the strong KDs route as in "common-cluster", the tail through the common direction alone.
  Expected: "cluster circuits"; false: "global readout", "per-KD", "mixed".

Worlds with a model to split the responses (issue 29), K = 60, linear: one common readout produces most of each
response, routing shared within output modules a planted minority (`_readout_world`; the share planted as
‖B_m·Δp_k‖ / ‖A·Δp_k‖, measured by the pipeline's `response_shares` smaller, as ĝ takes in the modules' mean):
- "readout-minority-0.05", "readout-minority-0.1": the KD-specific routing produces a twentieth or a tenth of each
  response — it follows the modules, and both deciding rows show it, yet the responses are one readout's.
  Expected: "global readout"; false: "cluster circuits", "per-KD", "mixed".
- "readout-minority-0.8": it produces a material share (measured ≈ 0.45). Expected: "cluster circuits"; false:
  "global readout", "per-KD", "mixed".
The known-answer worlds (`known_answer_world`) carry the same split, exactly, from the planted weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import AnalysisConfig
from ..config import AnalysisConfig
from ..model.jacobians import path_fractions
from ..results import CALLS, USES, ResponseShares, RoutingEvidence
from ..stats.clustering import cluster_kds, cosine_similarity
from ..stats.interventions import centroids, distance_plan, substitution_plan, substitution_test
from ..stats.reliability import with_noise_floor
from ..stats.decomposition import common_loadings, response_shares
from ..stats.evidence import core_evidence
from ..stats.gram import cosine_from_gram
from ..stats.mantel import partial_mantel
from ..stats.verdict import decide, use_answer, use_criteria
from ..store.cache import read_json
from .known_answers import MODULES, N_DRAWS, SET_SIZE, planted_model

NULL_WORLDS = ("independent", "lookup-tight", "lookup-singletons", "lookup-hetero", "lookup-K20", "lookup-K120",
               "shared-cause")
# Planted partial sharing: the share w of each KD's routing that its output module dictates, and the mean Mantel r
# it gives on C_jac^spec (300 replicates, SE 0.003): w = 0.025 → r ≈ 0.109 (just above the default smallest effect of
# interest, 0.1; w = 0.02 gave 0.087 there, 0.119 on the raw C_jac), 0.04 → 0.171.
ALTERNATIVES = {"sharing-r0.1": 0.025, "sharing-r0.2": 0.04}
COMMON_WORLDS = ("common-cluster", "identical-noise", "identical-noise-K116", "identical-noise-modules")
DRAW_WORLDS = ("draw-noise", "draw-cluster", "draw-per-KD")
WEAK_TAIL_WORLDS = ("weak-tail-lookup", "weak-tail-cluster")
# planted share of each response produced by cluster-shared routing on top of one common readout (issue 29)
READOUT_WORLDS = {"readout-minority-0.05": 0.05, "readout-minority-0.1": 0.1, "readout-minority-0.8": 0.8}
WORLDS = NULL_WORLDS + tuple(ALTERNATIVES) + COMMON_WORLDS + DRAW_WORLDS + WEAK_TAIL_WORLDS + tuple(READOUT_WORLDS)
# The calls that would be wrong in each world (the rest are right or, for "inconclusive", not a claim).
FALSE_CALLS = {**{w: ("cluster circuits",) for w in NULL_WORLDS if w != "shared-cause"},
               **{w: ("per-KD", "global readout") for w in ALTERNATIVES},
               "common-cluster": ("global readout", "per-KD", "mixed"),
               **{w: ("per-KD", "cluster circuits", "mixed") for w in COMMON_WORLDS[1:]},
               "draw-noise": ("cluster circuits", "per-KD", "mixed"),
               "draw-cluster": ("unreliable", "per-KD", "global readout", "mixed"),
               "draw-per-KD": ("unreliable", "cluster circuits", "mixed"),
               "weak-tail-lookup": ("cluster circuits",),
               "weak-tail-cluster": ("global readout", "per-KD", "mixed"),
               **{w: ("cluster circuits", "per-KD", "mixed") for w, share in READOUT_WORLDS.items()
                  if share < 0.2},
               **{w: ("global readout", "per-KD", "mixed") for w, share in READOUT_WORLDS.items() if share > 0.2}}
WEAK_TAIL_SHARE = 0.4  # share of weak-effect KDs in the weak-tail worlds (the genome-scale screen's tail: 41 %)
WEAK_TAIL_EFFECT = 0.05  # their ΔY scale against the modules' ≈ 1: well below `cluster_kds`' 0.25 × median
DRAW_NOISE_COMMON = 0.3  # common share c of the draw worlds' routing (below global_share: per-KD without a floor)
DRAW_NOISE_SHARE = 0.2  # half-specific noise energy / KD-specific energy in the reliable draw worlds
ROUTING_WORLD_DIM = 2000  # dimensions of the unit-norm Jacobians of the common-component worlds
NOISE_SIGMA = float(np.sqrt(1 / 0.98 - 1))  # ‖σ·e‖² / ‖g‖² with cos ≈ 1 / (1 + σ²) = 0.98
ROUTING_DIM = 24  # input directions u_k of a lookup
OUTPUT_DIM = 50
PATH_POINTS = next(f.default for f in dataclasses.fields(AnalysisConfig) if f.name == "path_points")  # as the pipeline


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass(frozen=True)
class World:
    """One replicate: delta_y [K, D]; c_out, c_jac, c_rep [K, K]; labels [K] from `cluster_kds` on delta_y;
    halves: (C_out of each half [K, K] × 2, Gram of each half's Jacobians [K, K] × 2, draws per half) in the draw
    worlds, the arguments of `reliability.with_noise_floor` (None elsewhere: no noise floor); response: the response
    split (`decomposition.response_shares`) in worlds built from a model (None: Gram-level worlds, whose call reads the
    Jacobian-energy shares)."""

    delta_y: np.ndarray
    c_out: np.ndarray
    c_jac: np.ndarray
    c_rep: np.ndarray
    labels: np.ndarray
    halves: tuple | None = None
    response: ResponseShares | None = None  # what produces the responses, where the world has a model to split


def _modules(rng, n_kds: int, n_modules: int, noise: float, singletons: float = 0.0):
    """Module of each KD (unbalanced, Dirichlet(1) proportions; a share `singletons` in no module) and ΔY."""
    module = rng.choice(n_modules, size=n_kds, p=rng.dirichlet(np.ones(n_modules)))
    centroids = rng.normal(size=(n_modules, OUTPUT_DIM))
    in_module = rng.random(n_kds) >= singletons
    delta_y = np.where(in_module[:, None], centroids[module], 0.0) + noise * rng.normal(size=(n_kds, OUTPUT_DIM))
    return np.where(in_module, module, -1), delta_y


def _lookup(rng, delta_y: np.ndarray, noise_scale: np.ndarray | None = None) -> np.ndarray:
    """C_jac of J_k = ΔY_k ⊗ u_k (+ KD-specific isotropic noise of norm noise_scale_k·‖ΔY_k‖, same shape as J_k)."""
    u = rng.normal(size=(len(delta_y), ROUTING_DIM))
    c_jac = cosine_similarity(delta_y) * cosine_similarity(u)  # cos(w⊗u, w'⊗u') = cos(w, w')·cos(u, u')
    if noise_scale is None:
        return c_jac
    # ⟨J_k + E_k, J_l + E_l⟩ = ⟨J_k, J_l⟩ + ⟨E_k, E_l⟩ (+ cross terms ≈ 0 in high dimension): add the noise Gram.
    noise = rng.normal(size=(len(delta_y), OUTPUT_DIM * ROUTING_DIM)) / np.sqrt(OUTPUT_DIM * ROUTING_DIM)
    noise *= noise_scale[:, None]
    gram = c_jac + noise @ noise.T
    norms = np.sqrt(np.diag(gram))
    return gram / np.outer(norms, norms)


def draw_world(rng, world: str, n_kds: int | None = None) -> World:
    """One replicate of `world` (see the module docstring) with its own KD count, or `n_kds` KDs (the same
    generator at another K: the normal reference's agreement study scales the worlds to K = 3,000)."""
    if world in DRAW_WORLDS:
        return _draw_world(rng, world, n_kds or 60)
    if world in WEAK_TAIL_WORLDS:
        return _weak_tail_world(rng, world, n_kds or 80)
    if world in READOUT_WORLDS:
        return _readout_world(rng, READOUT_WORLDS[world], n_kds or 60)
    n_kds = n_kds or {"lookup-K20": 20, "lookup-K120": 120, "common-cluster": 60, "identical-noise-K116": 116}.get(world, 40)
    tight = world == "lookup-tight"
    module, delta_y = _modules(rng, n_kds, 5, 0.3 if tight else 0.8, 0.5 if world == "lookup-singletons" else 0.0)
    rep = np.where(module[:, None] >= 0, np.eye(5)[np.maximum(module, 0)], 0.0) + 0.7 * rng.normal(size=(n_kds, 5))
    c_rep = cosine_similarity(rep)
    if world == "independent":
        hub = rng.lognormal(0.0, 1.0, size=n_kds)
        shared = rng.normal(size=OUTPUT_DIM)
        jac = hub[:, None] * shared / np.linalg.norm(shared) + rng.normal(size=(n_kds, OUTPUT_DIM)) / np.sqrt(OUTPUT_DIM)
        c_jac = cosine_similarity(jac)
    elif world.startswith("lookup"):
        c_jac = _lookup(rng, delta_y, rng.lognormal(0.0, 1.0, size=n_kds) if world == "lookup-hetero" else None)
    elif world == "shared-cause":
        embedding = rng.normal(size=(5, 30))
        p = rep @ embedding
        delta_y = p @ rng.normal(size=(30, OUTPUT_DIM)) + 1.5 * rng.normal(size=(n_kds, OUTPUT_DIM))
        jac = p @ rng.normal(size=(30, OUTPUT_DIM)) + 1.5 * rng.normal(size=(n_kds, OUTPUT_DIM))
        c_rep, c_jac = cosine_similarity(p), cosine_similarity(jac)
    elif world in ALTERNATIVES:
        share = ALTERNATIVES[world]
        shared = rng.normal(size=(5, OUTPUT_DIM * 4))[np.maximum(module, 0)]
        own = rng.normal(size=(n_kds, OUTPUT_DIM * 4))
        c_jac = cosine_similarity(np.sqrt(share) * shared + np.sqrt(1 - share) * own)
    elif world == "common-cluster":
        common, g, shared, own = _common_cluster_parts(rng, module)
        c_jac = cosine_similarity(np.sqrt(common) * g + np.sqrt((1 - common) / 2) * (shared + own))
    elif world.startswith("identical-noise"):
        g = _unit(rng.normal(size=ROUTING_WORLD_DIM))
        sigma = np.full(n_kds, NOISE_SIGMA)
        if world == "identical-noise-modules":
            level = rng.lognormal(0.0, 0.7, size=5)
            sigma = NOISE_SIGMA * (level / np.sqrt((level**2).mean()))[np.maximum(module, 0)]
        c_jac = cosine_similarity(g + sigma[:, None] * _unit(rng.normal(size=(n_kds, ROUTING_WORLD_DIM))))
    else:
        raise ValueError(f"world must be one of {WORLDS}, got {world!r}")
    c_out = cosine_similarity(delta_y)
    labels = cluster_kds(delta_y, 8, 0, 0).labels
    return World(delta_y, c_out, c_jac, c_rep, labels)


def _draw_world(rng, world: str, n_kds: int = 60) -> World:
    """A world with two halves of control draws (see the module docstring): each half's ΔY and unit-scale routing
    u^(h) [K, ROUTING_WORLD_DIM]; the full data are the halves' means."""
    module, delta_y = _modules(rng, n_kds, 5, 0.8)
    half_delta = [delta_y + 0.3 * rng.normal(size=delta_y.shape) for _ in range(2)]
    g = _unit(rng.normal(size=ROUTING_WORLD_DIM))
    own = _unit(rng.normal(size=(n_kds, ROUTING_WORLD_DIM)))

    def fresh():  # KD-specific directions drawn afresh for one half
        return _unit(rng.normal(size=(n_kds, ROUTING_WORLD_DIM)))

    if world == "draw-noise":
        c = DRAW_NOISE_COMMON
        halves = [np.sqrt(c) * g + np.sqrt(1 - c) * fresh() for _ in range(2)]
    else:
        if world == "draw-cluster":
            c = rng.uniform(0.95, 0.995)
            shared = _unit(rng.normal(size=(5, ROUTING_WORLD_DIM)))[module]
            specific = _unit(shared + own)
        else:
            c = DRAW_NOISE_COMMON
            specific = own
        base = np.sqrt(c) * g + np.sqrt(1 - c) * specific
        halves = [base + np.sqrt(DRAW_NOISE_SHARE * (1 - c)) * fresh() for _ in range(2)]
    jac = (halves[0] + halves[1]) / 2
    full_delta = (half_delta[0] + half_delta[1]) / 2
    rep = np.eye(5)[module] + 0.7 * rng.normal(size=(n_kds, 5))
    return World(full_delta, cosine_similarity(full_delta), cosine_similarity(jac), cosine_similarity(rep),
                 cluster_kds(full_delta, 8, 0, 0).labels,
                 (tuple(cosine_similarity(d) for d in half_delta), tuple(h @ h.T for h in halves), (1, 1)))


def _common_cluster_parts(rng, module: np.ndarray):
    """The "common-cluster" routing's parts: the common share c ~ U(0.95, 0.995), the common direction g
    [ROUTING_WORLD_DIM], each KD's module direction and its own direction [K, ROUTING_WORLD_DIM] (unit vectors;
    KDs in no module, −1, take module 0's)."""
    common = rng.uniform(0.95, 0.995)
    g = _unit(rng.normal(size=ROUTING_WORLD_DIM))
    shared = _unit(rng.normal(size=(5, ROUTING_WORLD_DIM)))[np.maximum(module, 0)]
    own = _unit(rng.normal(size=(len(module), ROUTING_WORLD_DIM)))
    return common, g, shared, own


def _weak_tail_world(rng, world: str, n_kds: int = 80) -> World:
    """A screen with a weak tail (`WEAK_TAIL_SHARE` of the KDs, ΔY of scale `WEAK_TAIL_EFFECT` in random
    directions: `cluster_kds` puts them in group 0). "weak-tail-lookup": Model A's lookup J_k = ΔY_k ⊗ u_k for
    every KD (a null). "weak-tail-cluster": the genome-scale screen's structure — the strong KDs route as in
    "common-cluster", the tail through the common direction alone (up to noise of a thousandth of its energy), so
    the tail's pairs carry C_out variance without routing variance."""
    module, delta_y = _modules(rng, n_kds, 5, 0.8)
    weak = rng.random(n_kds) < WEAK_TAIL_SHARE
    delta_y[weak] = WEAK_TAIL_EFFECT * rng.normal(size=(int(weak.sum()), OUTPUT_DIM))
    if world == "weak-tail-lookup":
        c_jac = _lookup(rng, delta_y)
    else:
        common, g, shared, own = _common_cluster_parts(rng, module)
        specific = np.where(weak[:, None], np.sqrt(1e-3) * own, np.sqrt((1 - common) / 2) * (shared + own))
        c_jac = cosine_similarity(np.sqrt(common) * g + specific)
    rep = np.eye(5)[module] + 0.7 * rng.normal(size=(n_kds, 5))
    return World(delta_y, cosine_similarity(delta_y), c_jac, cosine_similarity(rep), cluster_kds(delta_y, 8, 0, 0).labels)


def _readout_world(rng, share: float, n_kds: int = 60) -> World:
    """One common readout produces most of each response, routing shared within output modules a planted minority:
    J_k = A + b·B_m(k) + E_k [OUTPUT_DIM, ROUTING_DIM], Δp_k = m_module + 0.5·noise, ΔY_k = J_k·Δp_k exactly (a
    linear model, so the split is exact). b is set so that ‖B_m·Δp_k‖ / ‖A·Δp_k‖ = `share` on average; E_k
    (KD-specific, a fiftieth of A's entries) keeps C_jac^spec from being the modules alone. The response split is the
    pipeline's (`response_shares` on the local Jacobians); the cluster structure of C_jac^spec is B's."""
    module, _ = _modules(rng, n_kds, 5, 0.0)
    centres = rng.normal(size=(5, ROUTING_DIM))
    delta_p = centres[module] + 0.5 * rng.normal(size=(n_kds, ROUTING_DIM))
    readout = rng.normal(size=(OUTPUT_DIM, ROUTING_DIM))
    shared = rng.normal(size=(5, OUTPUT_DIM, ROUTING_DIM))
    common_part = delta_p @ readout.T  # [K, G]
    cluster_part = np.einsum("kgh,kh->kg", shared[module], delta_p)
    scale = share * np.linalg.norm(common_part, axis=1).mean() / np.linalg.norm(cluster_part, axis=1).mean()
    jac = readout + scale * shared[module] + 0.02 * rng.normal(size=(n_kds, OUTPUT_DIM, ROUTING_DIM))
    delta_y = np.einsum("kgh,kh->kg", jac, delta_p)
    flat = jac.reshape(n_kds, -1)
    gram = flat @ flat.T
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    direction = (unit.sum(axis=0) / np.linalg.norm(unit.sum(axis=0))).reshape(OUTPUT_DIM, ROUTING_DIM)
    labels = cluster_kds(delta_y, 8, 0, 0).labels
    response = response_shares(common_loadings(gram), direction, delta_p, delta_y, delta_y, labels)[0]
    return World(delta_y, cosine_similarity(delta_y), cosine_from_gram(gram), cosine_similarity(delta_p), labels,
                 None, response)


@dataclass(frozen=True)
class Rates:
    """Shares of `n_replicates` replicates (with their binomial standard errors) at level α.

    rejections: {test name: share with p < α}; calls: {call: share}; mean_r: mean Mantel r over replicates.
    """

    world: str
    n_replicates: int
    n_permutations: int
    alpha: float
    rejections: dict
    calls: dict
    mean_r: float
    mean_common: float = float("nan")  # mean common share of routing (`decomposition.decompose`)
    mean_reliability: float = float("nan")  # mean split-half reliability of C_jac^spec (draw worlds only)
    mean_response: float = float("nan")  # mean median KD-specific share of the responses (worlds with a model only)

    @property
    def false_calls(self) -> tuple:
        """The calls that would be wrong in this world (`FALSE_CALLS`; none known for the known answers here)."""
        return FALSE_CALLS.get(self.world, ())

    @property
    def false_rate(self) -> float:
        return float(sum(self.calls.get(c, 0.0) for c in self.false_calls))

    @staticmethod
    def se(rate: float, n: int) -> float:
        return float(np.sqrt(max(rate * (1 - rate), 1e-12) / n))

    def summary(self) -> str:
        n = self.n_replicates
        tests = ", ".join(f"{k} {v:.1%} ± {self.se(v, n):.1%}" for k, v in self.rejections.items())
        calls = ", ".join(f"{k} {v:.1%}" for k, v in self.calls.items() if v > 0)
        false = (f" — false calls ({', '.join(self.false_calls)}): {self.false_rate:.1%} ± "
                 f"{self.se(self.false_rate, n):.1%}" if self.false_calls else "")
        return (f"{self.world}: {n} replicates × {self.n_permutations} permutations, α = {self.alpha}, mean r "
                f"{self.mean_r:.3f}, mean common share {self.mean_common:.4f}"
                + (f", mean reliability of C_jac^spec {self.mean_reliability:.3f}" if self.mean_reliability == self.mean_reliability else "")
                + (f", mean KD-specific share of the responses {self.mean_response:.3f}"
                   if self.mean_response == self.mean_response else "")
                + f" — rejections: {tests} — calls: "
                f"{calls}{false}")


def world_evidence(w: World, n_permutations: int, seed: int) -> RoutingEvidence:
    """The statistics the call reads (`core_evidence`, no bootstrap), with the noise floor where `w` has halves."""
    evidence = dataclasses.replace(core_evidence(w.c_out, w.c_jac, w.labels, n_permutations, 0, seed),
                                   response=w.response)
    return evidence if w.halves is None else with_noise_floor(evidence, *w.halves)


def rates(world: str, n_replicates: int, n_permutations: int, rule, seed: int = 0) -> Rates:
    """Run every test that feeds the call (and the pair-level rank-sum and, in the shared-cause world, the partial
    Mantel) and the decision rule `rule` (a `verdict.DecisionRule`) on `n_replicates` seeded replicates."""
    rng = np.random.default_rng([seed, WORLDS.index(world)])

    def replicates():
        for _ in range(n_replicates):
            w = draw_world(rng, world)
            test_seed = int(rng.integers(2**31))
            evidence = world_evidence(w, n_permutations, test_seed)
            extra = {}
            if world == "shared-cause":
                extra["partial Mantel"] = partial_mantel(w.c_jac, w.c_out, w.c_rep, n_permutations,
                                                         test_seed).p_value < rule.alpha
            yield evidence, extra

    return _tally(world, replicates(), n_replicates, n_permutations, rule)


def _tally(name: str, replicates, n_replicates: int, n_permutations: int, rule) -> Rates:
    """Rates over `replicates`, an iterable of (evidence, {extra test: rejected}) — one decision per replicate."""
    counts: dict = {}
    calls = dict.fromkeys(CALLS, 0)
    r_values, common, reliability, response = [], [], [], []
    for evidence, extra in replicates:
        for test, rejected in {**replicate_rejections(evidence, rule.alpha), **extra}.items():
            counts[test] = counts.get(test, 0) + bool(rejected)
        calls[decide(evidence, rule).call] += 1
        r_values.append(evidence.mantel_pearson.statistic)
        common.append(evidence.decomposition.common_share)
        if evidence.noise_floor is not None:
            reliability.append(evidence.noise_floor.reliability_jac)
        if evidence.response is not None:
            response.append(evidence.response.specific_median)
    return Rates(name, n_replicates, n_permutations, rule.alpha, {k: v / n_replicates for k, v in counts.items()},
                 {k: v / n_replicates for k, v in calls.items()}, float(np.mean(r_values)), float(np.mean(common)),
                 float(np.mean(reliability)) if reliability else float("nan"),
                 float(np.mean(response)) if response else float("nan"))


def replicate_rejections(evidence: RoutingEvidence, alpha: float) -> dict:
    """{test: rejected at α} for the tests of one replicate: the two studentized tests feeding the call and the
    seed's pair-level rank-sum test (reported for contrast; known to be anti-conservative)."""
    return {"Mantel (studentized)": evidence.mantel_pearson.p_value < alpha,
            "Spearman Mantel (studentized)": evidence.mantel_spearman.p_value < alpha,
            "cluster contrast (studentized)": evidence.contrast.test.p_value < alpha,
            "within-cluster Mantel (studentized)": evidence.within_mantel.p_value < alpha,
            "pair-level rank-sum": (evidence.raw_contrast or evidence.contrast).rank_sum_p < alpha}


def known_answer_world(kind: str, seed: int, max_clusters: int = 8) -> World:
    """The planted known-answer model `kind` (`known_answers.planted_model`) as a world: analytic ΔY and J_k in the
    linear-LayerNorm approximation (no arc-state forward; the pipeline tests run the real model). A model that reads
    the control cells is evaluated on seeded draws of them as its config sets (`known_answers.N_DRAWS` draws of
    SET_SIZE cells), with the noise floor's halves."""
    planted = planted_model(kind, seed)
    products = planted.unit_products()
    halves = None
    if planted.cell_values is None:
        cells = None
        delta_y, on = planted.delta_y(), planted.open_shares()
    else:
        rng = np.random.default_rng([seed, 17])
        draws = np.stack([rng.choice(len(planted.cell_values), SET_SIZE, replace=False)
                          for _ in range(N_DRAWS[kind])])
        half = len(draws) // 2
        cells = draws
        half_delta = [planted.delta_y(d) for d in (draws[:half], draws[half:])]
        half_on = [planted.open_shares(d) for d in (draws[:half], draws[half:])]
        delta_y, on = (half_delta[0] + half_delta[1]) / 2, (half_on[0] + half_on[1]) / 2
        halves = (tuple(cosine_similarity(d) for d in half_delta), tuple(o @ products @ o.T for o in half_on),
                  (half, len(draws) - half))
    gram = on @ products @ on.T  # of J_k = W2 diag(on_k) W1
    labels = cluster_kds(delta_y, max_clusters, 0, 0).labels
    response = _planted_response(planted, products, gram, on, delta_y, labels, cells)
    return World(delta_y, cosine_similarity(delta_y), cosine_from_gram(gram), cosine_similarity(planted.pert_repr),
                 labels, halves, response)


def _planted_response(planted, products: np.ndarray, gram: np.ndarray, on: np.ndarray, delta_y: np.ndarray,
                      labels: np.ndarray, cells) -> ResponseShares:
    """The pipeline's response split (`response_shares`) of a planted model, exactly: ĝ = W2 diag(a) W1 / ‖·‖ with
    a = Σ_l on_l / ‖J_l‖, the path-averaged Ĵ_k = W2 diag(f_k) W1 over the pipeline's default path points, so
    Ĵ_k·ĝ = f_kᵀ M a / √(aᵀ M a) (`PlantedModel.unit_products`)."""
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))
    weights = (on / np.where(norms > 0, norms, 1.0)[:, None]).sum(axis=0)  # a [U]
    size = np.sqrt(weights @ products @ weights)
    direction = (planted.w2 * weights) @ planted.w1 / size  # ĝ [G, H]
    path = planted.open_shares(cells, path_fractions(PATH_POINTS))  # f [K, U]
    produced = (path * (planted.pert_repr @ planted.w1.T)) @ planted.w2.T  # Ĵ_k·p_k [K, G]
    along = path @ products @ weights / size
    return response_shares(along, direction, planted.pert_repr, produced, delta_y, labels, PATH_POINTS)[0]


def known_answer_calls(kind: str, n_seeds: int, n_permutations: int, rule) -> Rates:
    """The decision rule on `n_seeds` geometry seeds of a planted known-answer model."""
    def replicates():
        for seed in range(n_seeds):
            w = known_answer_world(kind, seed)
            yield world_evidence(w, n_permutations, seed), {}

    return _tally(f"known answer '{kind}'", replicates(), n_seeds, n_permutations, rule)


def stored_table(path: str | Path, rule) -> dict | None:
    """A calibration table `benchmarks/calibration.py` wrote ({"rule", "rates"}, in benchmarks/results/), keyed by
    the decision rule it was computed under: the table when that rule is `rule`, else None (never written, or
    calibrated for another rule, so it says nothing of this one)."""
    if not Path(path).is_file():
        return None
    table = read_json(path)
    return table if table["rule"] == dataclasses.asdict(rule) else None


# ---------------------------------------------------------------- is the geometry used? (interventions)
# Worlds at the model level: a planted known-answer model's p-space function (`PlantedModel.respond`) answers every
# substituted pert_repr, with draw noise — a part shared by every response of a replicate (the control draws' own
# offset) and an independent part — of USE_NOISE × the median ‖ΔY_k‖ each. Clusters come from `cluster_kds` on the
# noisy ΔY, as in the pipeline. Each world: (known-answer kind, planted answer); a replicate may keep the KDs of the
# first `n_modules` planted modules only (the power at few clusters: C = 2, 3, 4 output clusters).
# - "lookup", "keyed", "random": per-KD lookups (gated on KD-specific directions; keyed on each KD's own embedding,
#   whose geometry clusters by output; random embeddings): "not used"; wrong: "used", "partly used".
# - "keyed-common": the keyed lookup plus a unit every KD opens, reading the embeddings' mean direction and writing
#   one programme (half of the response's size): any centroid reproduces that common part, cluster or random —
#   built to fool a test that reads the share reproduced rather than the gain over random groups. "not used".
# - "positive", "keyed-smooth", "degenerate": module units, a lookup wide enough to interpolate over the module, one
#   linear map: "used"; wrong: "not used".
# - "partial-use": the positive model with its module units writing a quarter of their programme (the KD-specific
#   units unchanged): the shared part carries a minority of the response and the model reads each KD's specific
#   part beyond it. "partly used"; wrong: "not used".
USE_WORLDS = {"lookup": ("negative", "not used"), "keyed": ("keyed", "not used"), "random": ("random", "not used"),
              "keyed-common": ("keyed", "not used"), "positive": ("positive", "used"),
              "keyed-smooth": ("keyed-smooth", "used"), "degenerate": ("degenerate", "used"),
              "partial-use": ("positive", "partly used")}
WRONG_USES = {"not used": ("used", "partly used"), "used": ("not used",), "partly used": ("not used",)}
USE_NOISE = 0.2
PARTIAL_USE = 0.25  # the module units' share of their planted programme in "partial-use"
# The interventions' settings of a config that sets none (the calibration runs the pipeline's defaults).
_INTERVENTION_DEFAULTS = {f.name: f.default for f in dataclasses.fields(AnalysisConfig)
                          if f.name in ("random_groups", "matched_moves", "probe_ratio", "n_bootstrap")}


def use_world(world: str, seed: int, n_modules: int | None = None):
    """One replicate: (ΔY [K, G] as observed, pert_repr [K, H], respond(p [B, H]) -> noisy ΔY(p) [B, G], labels [K]),
    with the KDs of the first `n_modules` planted modules only (None: every KD)."""
    kind, _ = USE_WORLDS[world]
    planted = planted_model(kind, seed)
    if n_modules is not None:
        if not 1 <= n_modules <= len(MODULES):
            raise ValueError(f"n_modules must be in 1..{len(MODULES)}, got {n_modules}")
        kept = np.isin(planted.kd_module, MODULES[:n_modules])
        planted = dataclasses.replace(planted, pert_repr=planted.pert_repr[kept],
                                      kd_names=tuple(np.asarray(planted.kd_names)[kept]),
                                      kd_module=tuple(np.asarray(planted.kd_module)[kept]))
    if world == "partial-use":
        w2 = planted.w2.copy()
        modules = [u for u, name in enumerate(planted.unit_kind) if name.startswith("module:")]
        w2[:, modules] *= PARTIAL_USE
        planted = dataclasses.replace(planted, w2=w2)
    rng = np.random.default_rng([seed, 31, list(USE_WORLDS).index(world)])
    n_genes = planted.w2.shape[0]
    common_direction = _unit(planted.pert_repr.mean(axis=0))
    common_programme = _unit(rng.normal(size=n_genes))
    scale = float(np.median(np.linalg.norm(planted.delta_y(), axis=1)))
    reach = float(np.median(planted.pert_repr @ common_direction))

    def respond(p: np.ndarray) -> np.ndarray:
        out = planted.respond(p)
        if world == "keyed-common":  # a unit open for every KD, reading the embeddings' mean direction
            out = out + 0.5 * scale * np.maximum(p @ common_direction, 0.0)[:, None] / reach * common_programme
        noise = rng.normal(size=out.shape) / np.sqrt(n_genes)
        return out + USE_NOISE * scale * (shared + noise)

    shared = rng.normal(size=n_genes) / np.sqrt(n_genes)
    delta_y = respond(planted.pert_repr)
    return delta_y, planted.pert_repr, respond, cluster_kds(delta_y, 8, 0, 0).labels


@dataclass(frozen=True)
class UseRates:
    """The substitution test and the use answer over `n_replicates` replicates of one world (the KDs of its first
    `n_modules` modules; None: all): rejection (the gain's permutation p < α), uses {answer: share}, false_rate (the wrong answers'
    share, `WRONG_USES`) with its binomial SE, mean_gain, mean_excess (the distance control's excess cost),
    median_ratio (median over replicates of the median distance ratio), mean_clusters (substituted clusters)."""

    world: str
    expected: str
    n_replicates: int
    alpha: float
    n_modules: int | None
    rejection: float
    uses: dict
    false_rate: float
    false_se: float
    mean_gain: float
    mean_excess: float
    median_ratio: float
    mean_clusters: float

    def summary(self) -> str:
        uses = ", ".join(f"{k} {v:.1%}" for k, v in self.uses.items() if v > 0)
        modules = "every module" if self.n_modules is None else f"{self.n_modules} modules"
        return (f"{self.world} (planted: {self.expected}; {modules}, mean {self.mean_clusters:.1f} clusters "
                f"substituted): {self.n_replicates} replicates, mean gain "
                f"{self.mean_gain:.3f}, excess cost {self.mean_excess:.3f}, distance ratio {self.median_ratio:.2f}; "
                f"substitution rejects {self.rejection:.1%} ± {Rates.se(self.rejection, self.n_replicates):.1%}; "
                f"answers: {uses} — wrong: {self.false_rate:.1%} ± {self.false_se:.1%}")


def _nanmean(values: list) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def use_rates(world: str, n_replicates: int, rule, seed: int = 0, n_modules: int | None = None) -> UseRates:
    """The interventions' answer (`verdict.use_criteria` and `use_answer`, as the pipeline decides it, with the
    pipeline's default intervention settings) over seeded replicates."""
    _, expected = USE_WORLDS[world]
    settings = _INTERVENTION_DEFAULTS
    uses = dict.fromkeys(USES, 0)
    rejections, gains, excess, ratios, clusters = 0, [], [], [], []
    for replicate in range(n_replicates):
        delta_y, pert_repr, respond, labels = use_world(world, seed + replicate, n_modules)
        plan = substitution_plan(labels, settings["random_groups"], replicate)
        distance = distance_plan(pert_repr, np.zeros(pert_repr.shape[1]), plan, settings["probe_ratio"],
                                 settings["matched_moves"], replicate)
        test, _ = substitution_test(delta_y, respond(centroids(pert_repr, plan)), respond(distance.points), plan,
                                    distance, range(len(labels)), settings["n_bootstrap"], replicate)
        uses[use_answer(use_criteria(test, None, rule))] += 1
        rejections += bool(test.gain.p_value < rule.alpha)
        gains.append(test.gain.estimate)
        excess.append(test.distance.excess.estimate)
        ratios.append(test.distance.ratio_median)
        clusters.append(test.gain.n_clusters)
    false_rate = sum(uses[w] for w in WRONG_USES[expected]) / n_replicates
    return UseRates(world, expected, n_replicates, rule.alpha, n_modules, rejections / n_replicates,
                    {k: v / n_replicates for k, v in uses.items()}, false_rate, Rates.se(false_rate, n_replicates),
                    _nanmean(gains), _nanmean(excess), float(np.nanmedian(ratios)) if np.isfinite(ratios).any()
                    else float("nan"), float(np.mean(clusters)))

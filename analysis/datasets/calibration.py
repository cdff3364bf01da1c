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
  where "negative" would be a false call; the mean r is printed beside the call rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import PACKAGE_DIR
from ..results import CALLS, RoutingEvidence
from ..stats.clustering import cluster_kds, cosine_similarity
from ..stats.routing import core_evidence, partial_mantel
from ..stats.verdict import decide
from ..store.cache import read_json
from .known_answers import planted_model

NULL_WORLDS = ("independent", "lookup-tight", "lookup-singletons", "lookup-hetero", "lookup-K20", "lookup-K120",
               "shared-cause")
# Planted partial sharing: the share w of each KD's routing that its output module dictates, and the mean Mantel r it
# gives (1,000 replicates): w = 0.02 → r ≈ 0.11 (just above the default smallest effect of interest, 0.1), 0.04 → 0.22.
ALTERNATIVES = {"sharing-r0.1": 0.02, "sharing-r0.2": 0.04}
ROUTING_DIM = 24  # input directions u_k of a lookup
OUTPUT_DIM = 50


@dataclass(frozen=True)
class World:
    """One replicate: delta_y [K, D]; c_out, c_jac, c_rep [K, K]; labels [K] from `cluster_kds` on delta_y."""

    delta_y: np.ndarray
    c_out: np.ndarray
    c_jac: np.ndarray
    c_rep: np.ndarray
    labels: np.ndarray


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


def draw_world(rng, world: str) -> World:
    """One replicate of `world` (see the module docstring)."""
    n_kds = {"lookup-K20": 20, "lookup-K120": 120}.get(world, 40)
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
    else:
        raise ValueError(f"world must be one of {NULL_WORLDS + tuple(ALTERNATIVES)}, got {world!r}")
    c_out = cosine_similarity(delta_y)
    labels = cluster_kds(delta_y, 8, 0, 0).labels
    return World(delta_y, c_out, c_jac, c_rep, labels)


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

    @staticmethod
    def se(rate: float, n: int) -> float:
        return float(np.sqrt(max(rate * (1 - rate), 1e-12) / n))

    def summary(self) -> str:
        n = self.n_replicates
        tests = ", ".join(f"{k} {v:.1%} ± {self.se(v, n):.1%}" for k, v in self.rejections.items())
        calls = ", ".join(f"{k} {v:.1%}" for k, v in self.calls.items() if v > 0)
        return (f"{self.world}: {n} replicates × {self.n_permutations} permutations, α = {self.alpha}, mean r "
                f"{self.mean_r:.3f} — rejections: {tests} — calls: {calls}")


def rates(world: str, n_replicates: int, n_permutations: int, rule, seed: int = 0) -> Rates:
    """Run every test that feeds the call (and the pair-level rank-sum and, in the shared-cause world, the partial
    Mantel) and the decision rule `rule` (a `verdict.DecisionRule`) on `n_replicates` seeded replicates."""
    rng = np.random.default_rng([seed, (NULL_WORLDS + tuple(ALTERNATIVES)).index(world)])

    def replicates():
        for _ in range(n_replicates):
            w = draw_world(rng, world)
            test_seed = int(rng.integers(2**31))
            evidence = core_evidence(w.c_out, w.c_jac, w.labels, n_permutations, 0, test_seed)
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
    r_values = []
    for evidence, extra in replicates:
        for test, rejected in {**replicate_rejections(evidence, rule.alpha), **extra}.items():
            counts[test] = counts.get(test, 0) + bool(rejected)
        calls[decide(evidence, rule).call] += 1
        r_values.append(evidence.mantel_pearson.statistic)
    return Rates(name, n_replicates, n_permutations, rule.alpha, {k: v / n_replicates for k, v in counts.items()},
                 {k: v / n_replicates for k, v in calls.items()}, float(np.mean(r_values)))


def replicate_rejections(evidence: RoutingEvidence, alpha: float) -> dict:
    """{test: rejected at α} for the tests of one replicate: the two studentized tests feeding the call and the
    seed's pair-level rank-sum test (reported for contrast; known to be anti-conservative)."""
    return {"Mantel (studentized)": evidence.mantel_pearson.p_value < alpha,
            "Spearman Mantel (studentized)": evidence.mantel_spearman.p_value < alpha,
            "cluster contrast (studentized)": evidence.contrast.test.p_value < alpha,
            "pair-level rank-sum": evidence.contrast.rank_sum_p < alpha}


def known_answer_world(kind: str, seed: int, max_clusters: int = 8) -> World:
    """The planted known-answer model `kind` (`known_answers.planted_model`) as a world: analytic ΔY and J_k in the
    linear-LayerNorm approximation (no arc-state forward; the pipeline tests run the real model)."""
    planted = planted_model(kind, seed)
    delta_y = planted.delta_y()
    c_out = cosine_similarity(delta_y)
    c_jac = cosine_similarity(planted.jacobians().reshape(len(delta_y), -1))
    labels = cluster_kds(delta_y, max_clusters, 0, 0).labels
    return World(delta_y, c_out, c_jac, cosine_similarity(planted.pert_repr), labels)


def known_answer_calls(kind: str, n_seeds: int, n_permutations: int, rule) -> Rates:
    """The decision rule on `n_seeds` geometry seeds of a planted known-answer model."""
    def replicates():
        for seed in range(n_seeds):
            w = known_answer_world(kind, seed)
            yield core_evidence(w.c_out, w.c_jac, w.labels, n_permutations, 0, seed), {}

    return _tally(f"known answer '{kind}'", replicates(), n_seeds, n_permutations, rule)


STORED_RATES = PACKAGE_DIR / "datasets" / "calibration_rates.json"  # written by benchmarks/calibration.py


def stored_rates(path: Path = STORED_RATES) -> dict | None:
    """The last calibration run's table ({"rule", "rates"}), or None when it was never written."""
    return read_json(path) if Path(path).is_file() else None

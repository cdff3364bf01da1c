"""Cost of every routing statistic at K = 1,035 (the seed's screen) and K = 10,000 (genome scale): wall time and peak
memory, each reference.

    python benchmarks/bench_routing_stats.py [--kds 1035,10000] [--permutations 999] [--bootstrap 1000]
                                             [--permute-below 2000] [--package DIR]

A synthetic screen per K (`world`): ΔY of K KDs in 12 output modules of Dirichlet sizes (a tenth weak, label 0)
gives C_out [K, K]; unit-norm Jacobians with a common direction, a module part and a KD-specific part give the Gram
[K, K] (so C_jac and C_jac^spec through `decomposition.decompose`, as the pipeline computes them); the labels are the
modules. Each statistic runs alone in one process per K: wall seconds and its peak memory above what was allocated
before it (tracemalloc, which sees numpy's buffers), then the process's peak RSS. Studentized tests run with the
normal reference at every K and with --permutations KD-label permutations below --permute-below; above it the
permutation reference is timed on 2 permutations and extrapolated to the config's 9,999 (printed as such).

--package DIR imports `analysis` from DIR instead (e.g. an older commit: `git archive <commit> analysis | tar -x -C
DIR`): functions without a `reference` argument run their only (permutation) path, so the same script measures
"before".
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import multiprocessing as mp
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np

N_MODULES = 12
FULL_PERMUTATIONS = 9999  # the config's n_permutations, for the extrapolated rows
STATISTICS = ("gram", "pairs", "nulls", "mantel", "contrast", "decomposition", "evidence")  # `analysis.stats` modules


def statistics() -> SimpleNamespace:
    """The routing statistics by name: from `analysis.stats`'s modules by concern, or from an older `analysis`
    (--package) that kept them all in one module, `stats.routing`."""
    try:
        return importlib.import_module("analysis.stats.routing")
    except ModuleNotFoundError:
        modules = [importlib.import_module(f"analysis.stats.{name}") for name in STATISTICS]
        return SimpleNamespace(**{name: value for module in modules for name, value in vars(module).items()
                                  if not name.startswith("__")})


def world(n_kds: int, seed: int = 0) -> dict:
    """A synthetic screen of `n_kds` KDs: c_out, gram, c_jac, c_rep [K, K] float64 and labels [K] (0: weak)."""
    from analysis.stats.clustering import cosine_similarity

    routing = statistics()

    rng = np.random.default_rng(seed)
    module = rng.choice(N_MODULES, size=n_kds, p=rng.dirichlet(np.ones(N_MODULES)))
    delta_y = rng.normal(size=(N_MODULES, 64))[module] + 0.8 * rng.normal(size=(n_kds, 64))
    common, shared = rng.normal(size=256), rng.normal(size=(N_MODULES, 256))[module]
    jac = 3.0 * common + 0.5 * shared + rng.normal(size=(n_kds, 256))
    jac /= np.linalg.norm(jac, axis=1, keepdims=True)
    labels = np.where(rng.random(n_kds) < 0.1, 0, module + 1)
    gram = jac @ jac.T
    return {"c_out": cosine_similarity(delta_y), "gram": gram, "c_jac": routing.cosine_from_gram(gram),
            "c_rep": cosine_similarity(rng.normal(size=(N_MODULES, 16))[module] + rng.normal(size=(n_kds, 16))),
            "labels": labels}


def measure(function) -> tuple[float, float, object]:
    """(seconds, peak MiB above the allocations before the call, result) of function()."""
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    result = function()
    seconds = time.perf_counter() - started
    return seconds, (tracemalloc.get_traced_memory()[1] - before) / 2**20, result


def with_reference(function, *args, reference: str):
    """function(*args, reference=...) where it takes one; an older `analysis` (--package) has only permutations."""
    if "reference" in inspect.signature(function).parameters:
        return function(*args, reference=reference)
    return function(*args) if reference == "permutation" else None


def rows_for(n_kds: int, permutations: int, bootstrap: int, permute_below: int, package: str | None) -> None:
    """Print one row per statistic at `n_kds` KDs (run in a fresh process: its peak RSS is this K's)."""
    if package:
        sys.path.insert(0, package)
    import analysis

    routing = statistics()

    tracemalloc.start()
    w = world(n_kds)
    c_out, gram, c_jac, c_rep, labels = w["c_out"], w["gram"], w["c_jac"], w["c_rep"], w["labels"]
    print(f"\n== K = {n_kds:,} ({n_kds * (n_kds - 1) // 2:,} pairs; one K × K float64 = {8 * n_kds**2 / 2**20:,.0f} MiB)"
             f" — analysis from {Path(analysis.__file__).parents[1]} ==",
          f"\n{'statistic':<46}{'reference':<34}{'seconds':>10}{'peak MiB':>10}", flush=True)

    def row(name, reference, seconds, peak):
        print(f"{name:<46}{reference:<34}{seconds:>10.2f}{peak:>10.0f}", flush=True)

    seconds, peak, (_, spec) = measure(lambda: routing.decompose(gram))
    row("Gram → C_jac^spec (decompose)", "—", seconds, peak)
    row("spread (mean, SD of C_out and C_jac)", "—", *measure(lambda: routing.spread(c_out, c_jac))[:2])
    tests = {
        "Mantel r(C_out, C_jac^spec)": lambda n, ref: with_reference(routing.mantel, c_out, spec, n, 0, "pearson",
                                                                     reference=ref),
        "Spearman Mantel": lambda n, ref: with_reference(routing.mantel, c_out, spec, n, 0, "spearman", reference=ref),
        "contrast same − cross (C_jac^spec)": lambda n, ref: with_reference(routing.cluster_contrast, spec, labels, n,
                                                                            0, reference=ref),
        "within-cluster Mantel": lambda n, ref: with_reference(routing.within_cluster_mantel, c_out, spec, labels, n, 0,
                                                               reference=ref),
        "raw Mantel r(C_out, C_jac)": lambda n, ref: with_reference(routing.mantel, c_out, c_jac, n, 0, "pearson",
                                                                    reference=ref),
        "raw contrast (C_jac)": lambda n, ref: with_reference(routing.cluster_contrast, c_jac, labels, n, 0,
                                                              reference=ref),
        "partial Mantel r(C_jac, C_out | C_rep)": lambda n, ref: with_reference(routing.partial_mantel, c_jac, c_out,
                                                                                c_rep, n, 0, reference=ref),
        "Mantel r(C_out, C_rep)": lambda n, ref: with_reference(routing.mantel, c_out, c_rep, n, 0, "pearson",
                                                                reference=ref),
    }
    for name, test in tests.items():
        seconds, peak, result = measure(lambda: test(0, "normal"))
        if result is not None:
            row(name, "normal", seconds, peak)
        if n_kds < permute_below:
            row(name, f"{permutations:,} permutations", *measure(lambda: test(permutations, "permutation"))[:2])
        else:
            seconds, peak, _ = measure(lambda: test(2, "permutation"))
            row(name, f"{FULL_PERMUTATIONS:,} perm. (2 timed, extrap.)", seconds / 2 * FULL_PERMUTATIONS, peak)
    row("cluster-level r (C × C means)", f"{permutations:,} permutations",
        *measure(lambda: routing.cluster_level(c_out, spec, labels, permutations, 0))[:2])
    # The bootstrap's cost is linear in its resamples: an older `analysis` (a loop of K² work per resample) is timed
    # on a few and extrapolated above --permute-below.
    timed = bootstrap if hasattr(routing, "BLOCK_BYTES") or n_kds < permute_below else 3  # BLOCK_BYTES: blocked code
    seconds, peak, _ = measure(lambda: routing.kd_bootstrap_ci(c_out, spec, timed, 0))
    row("KD-bootstrap CI of r", f"{bootstrap:,} resamples" + ("" if timed == bootstrap else f" ({timed} timed, extrap.)"),
        seconds * bootstrap / timed, peak)
    row("keyed-lookup r(C_jac, C_out ⊙ C_rep)", "—", *measure(lambda: routing.pearson(c_jac, c_out * c_rep))[:2])
    if hasattr(routing, "reference_for"):
        seconds, peak, _ = measure(lambda: routing.routing_evidence(c_out, c_jac, c_rep, labels, permutations, bootstrap,
                                                                    0, gram, normal_reference_kds=permute_below))
        row("routing_evidence (everything the stage reads)",
            "normal" if n_kds >= permute_below else f"{permutations:,} permutations", seconds, peak)
    tracemalloc.stop()
    print(f"process peak RSS (the world's 4 K × K matrices included): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:,.2f} GiB", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kds", default="1035,10000")
    parser.add_argument("--permutations", type=int, default=999)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--permute-below", type=int, default=2000, help="K from which only the normal reference runs "
                        "in full (the permutation reference is timed on 2 permutations and extrapolated)")
    parser.add_argument("--package", default=None, help="import analysis from this folder (an older commit)")
    args = parser.parse_args(argv)
    import numpy
    print(f"numpy {numpy.__version__}; one process per K; times in seconds, peaks in MiB above the inputs")
    for n_kds in (int(k) for k in args.kds.split(",")):
        with mp.get_context("spawn").Pool(1) as pool:
            pool.apply(rows_for, (n_kds, args.permutations, args.bootstrap, args.permute_below, args.package))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())

"""Benchmark: the quality stage (Part 0) on the demo's primary line, part by part, then projected to the seed's size.

    python benchmarks/bench_quality.py [--config configs/demo.toml] [--n-kds 1035] [--n-genes 2000] [--set-size 128]
                                       [--n-draws 4] [--cells-per-kd 100] [--n-controls 10000]

Measured (the effects stage read from the cache, computed first when missing): reading the observed cells, the
predicted cells (`model.predict.predict_cells`), cell-eval's scoring with baseline and ceiling
(`stats.quality.score_predictions`), the sensitivity call, and the process's peak RSS after each.

Projected: the predicted cells' float32 array K·R·S·G; cell-eval's time scaled by the DE work, which dominates it
(pdex compares each KD's cells with the reference cells on every gene: ∝ K·G·(cells per KD + reference cells), for
the predicted pair and the observed pair, weighted as measured); the forward passes scale like the effects stage.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.config import load_config  # noqa: E402
from analysis.datasets import demo  # noqa: E402
from analysis.model.observed import load_observed  # noqa: E402
from analysis.model.predict import predict_cells  # noqa: E402
from analysis.pipeline import run as pipeline  # noqa: E402
from analysis.stats import quality  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--n-kds", type=int, default=1035)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--set-size", type=int, default=128)
    parser.add_argument("--n-draws", type=int, default=4)
    parser.add_argument("--cells-per-kd", type=int, default=100, help="observed cells per KD at the projected size")
    parser.add_argument("--n-controls", type=int, default=10000, help="observed control cells at the projected size")
    args = parser.parse_args()

    config = load_config(args.config)
    demo.ensure_demo(config)
    config = config.per_line()[0]
    line = pipeline.load_line(config)
    effects = pipeline.run_effects(line, progress=False)
    responses = effects.responses
    start_mb = peak_mb()
    timings = {}

    started = time.perf_counter()
    observed = load_observed(config, line.run)
    timings["observed cells"] = time.perf_counter() - started
    started = time.perf_counter()
    predicted, control = predict_cells(line.run, responses.kd_names, responses.draw_cells, config.kds_per_call)
    timings["predicted cells"] = time.perf_counter() - started
    started = time.perf_counter()
    kd_table, _ = quality.score_predictions(predicted, control, observed.cells, observed.labels, responses.kd_names,
                                            line.run.gene_names, config.control_label, config.seed)
    timings["cell-eval (model, baseline, ceiling; two references)"] = time.perf_counter() - started
    with np.load(line.stage("routing") / "matrices.npz") as matrices:
        gram, c_jac, c_rep = matrices["gram"], matrices["c_jac"], matrices["c_rep"]
    keep = quality.well_predicted(kd_table, responses.kd_names)
    started = time.perf_counter()
    quality.sensitivity(keep, effects.c_out, c_jac, c_rep, gram, effects.labels, config.n_permutations,
                        config.n_bootstrap, config.seed, config.decision_rule)
    timings[f"sensitivity ({int(keep.sum())} KDs, {config.n_permutations} permutations)"] = time.perf_counter() - started

    k, n_pred, g = predicted.shape
    labels = observed.labels
    n_obs_kd = float(np.mean([np.sum(labels == kd) for kd in responses.kd_names]))
    n_ctrl = int(np.sum(labels == config.control_label))
    print(f"demo line {config.cell_line}: K = {k}, G = {g}, predicted cells per KD {n_pred} (R·S), observed per KD "
          f"{n_obs_kd:.0f}, observed controls {n_ctrl}; peak RSS before the stage {start_mb:.0f} MB, after {peak_mb():.0f} MB")
    for name, seconds in timings.items():
        print(f"  {name:<60} {seconds:7.1f} s")
    total = sum(timings.values())
    print(f"  {'total':<60} {total:7.1f} s")

    K, G, S, R = args.n_kds, args.n_genes, args.set_size, args.n_draws
    de_demo = k * g * (n_pred + n_pred) + k * g * (n_obs_kd + n_ctrl)  # predicted pair + observed pair, as pdex works
    de_seed = K * G * (R * S + R * S) + K * G * (args.cells_per_kd + args.n_controls)
    cell_eval = timings["cell-eval (model, baseline, ceiling; two references)"] * de_seed / de_demo
    predicted_gb = K * R * S * G * 4 / 1e9
    observed_gb = (K * args.cells_per_kd + args.n_controls) * G * 4 / 1e9
    print(f"projected at K = {K:,}, G = {G:,}, S = {S}, R = {R}, {args.cells_per_kd} observed cells per KD, "
          f"{args.n_controls:,} controls (same CPU and threads):")
    print(f"  cell-eval ≈ {cell_eval / 3600:.1f} h (DE work × {de_seed / de_demo:.0f}; pdex uses every core, so divide "
          f"by the core ratio on a larger node)")
    print(f"  predicted cells {predicted_gb:.1f} GB float32 (held twice while scored: the array and cell-eval's "
          f"AnnData), observed cells {observed_gb:.1f} GB")


if __name__ == "__main__":
    main()

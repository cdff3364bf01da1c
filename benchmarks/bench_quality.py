"""Benchmark: the quality stage (Part 0) on the demo's primary line with cell-eval's DE metrics on and off, side by
side, part by part, then projected to the seed's size.

    python benchmarks/bench_quality.py [--config configs/demo.toml] [--n-kds 1035] [--n-genes 2000] [--set-size 128]
                                       [--n-draws 4] [--cells-per-kd 100] [--n-controls 10000] [--off-at-size]

The pipeline runs first (every stage read from the cache, computed when missing). Then each mode runs in a process of
its own: one untimed scoring of two KDs (imports, numba's compilation of pdex, polars' first calls), then, timed,
reading the observed cells, the predictions (DE on: every predicted cell, `model.predict.predict_cells`, in the
buffer cell-eval reads; off: each KD's mean from ΔY, `predict_means`), cell-eval's scoring with baseline and ceiling
(`stats.quality.score_predictions`) and the sensitivity call. Memory: the process's peak RSS (VmHWM) above its RSS
when the timed part starts, i.e. what the stage adds to a process that already holds the run.

Projected, from the measured parts: cell-eval's DE time (on − off) scaled by the DE work, which pdex does gene by gene
for every KD against the reference cells (∝ K·G·(cells per KD + reference cells), for the predicted cells, and for
the observed cells three times over: their own, the baseline's and the ceiling's two halves), its other work by the observed cells it reads
(∝ (K·cells per KD + controls)·G); memory from the arrays the stage holds at its peak (printed).
--off-at-size also measures cell-eval's scoring without DE at the projected size itself, on synthetic cells
(log1p of Poisson counts; group means as the predictions): its time and peak RSS above the process's RSS before the
observed cells were made (so they count), in a process of its own (several GB at the seed's size).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import analysis  # noqa: E402
from analysis.config import load_config  # noqa: E402
from analysis.datasets import demo  # noqa: E402
from analysis.model.observed import load_observed  # noqa: E402
from analysis.model.predict import predict_cells, predict_means  # noqa: E402
from analysis.pipeline import run as pipeline  # noqa: E402
from analysis.results import RoutingResult  # noqa: E402
from analysis.stats import quality  # noqa: E402
from analysis.store import codec  # noqa: E402

MODES = ("on", "off")
SCORE = "cell-eval (model, baseline, ceiling; two references)"


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (Linux, kB) in MB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:")) / 1024


def rss_mb() -> float:
    return status_mb("VmRSS")


def peak_mb() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss would carry the parent's peak over the exec of a child)."""
    return status_mb("VmHWM")


def measure(config_path: str, de: bool) -> dict:
    """One mode in this process: the warm-up, then the timed stage; timings (s), memory (MB) and sizes."""
    config = load_config(config_path).per_line()[0]
    line = pipeline.load_line(config)
    effects = pipeline.run_effects(line, progress=False)
    responses, genes, control = effects.responses, line.run.gene_names, config.control_label

    def predict(kds):
        rows = [responses.kd_names.index(kd) for kd in kds]
        return (predict_cells(line.run, kds, responses.draw_cells, config.kds_per_call) if de else
                predict_means(line.run, responses.delta_y[rows], responses.draw_cells))

    observed = load_observed(config, line.run)
    two = list(responses.kd_names[:2])
    keep = np.isin(observed.labels, two + [control])
    quality.score_predictions(predict(two), observed.cells[keep], observed.labels[keep], two, genes, control,
                              config.seed, de)
    del observed, keep
    gc.collect()
    start_rss, start_peak, timings = rss_mb(), peak_mb(), {}

    started = time.perf_counter()
    observed = load_observed(config, line.run)
    timings["observed cells"] = time.perf_counter() - started
    started = time.perf_counter()
    predicted = predict(list(responses.kd_names))
    timings["predicted cells (DE on) / group means from ΔY (off)"] = time.perf_counter() - started
    started = time.perf_counter()
    kd_table, _ = quality.score_predictions(predicted, observed.cells, observed.labels, responses.kd_names, genes,
                                            control, config.seed, de)
    timings[SCORE] = time.perf_counter() - started
    stage = line.stage("routing")  # stored by the analysis `main` ran first
    routing = codec.read_record(stage, RoutingResult, stage.record())
    gram, c_jac, c_rep = routing.gram, routing.c_jac, routing.c_rep
    keep = quality.well_predicted(kd_table, responses.kd_names)
    started = time.perf_counter()
    quality.sensitivity(keep, effects.c_out, c_jac, c_rep, gram, effects.labels, config.n_permutations,
                        config.n_bootstrap, config.seed, config.decision_rule)
    timings[f"sensitivity ({int(keep.sum())} KDs, {config.n_permutations} permutations)"] = time.perf_counter() - started
    labels = observed.labels
    return {"timings": timings, "start_rss_mb": start_rss, "peak_before_mb": start_peak, "peak_mb": peak_mb(),
            "predicted_mb": predicted.nbytes / 2**20, "observed_mb": observed.cells.nbytes / 2**20,
            "cell_line": config.cell_line, "k": len(responses.kd_names), "g": len(genes),
            "n_pred": int(responses.draw_cells.size),
            "n_obs_kd": float(np.mean([np.sum(labels == kd) for kd in responses.kd_names])),
            "n_ctrl": int(np.sum(labels == control))}


def measure_off_at_size(n_kds: int, n_genes: int, cells_per_kd: int, n_controls: int) -> dict:
    """cell-eval without DE on synthetic cells of the projected size, in this process: seconds and MB."""
    rng = np.random.default_rng(0)
    control = "non-targeting"

    def case(k):
        kds, genes = [f"KD{i}" for i in range(k)], [f"G{i}" for i in range(n_genes)]
        labels = np.array([control] * n_controls + [kd for kd in kds for _ in range(cells_per_kd)])
        observed = np.empty((len(labels), n_genes), dtype=np.float32)
        for start in range(0, len(labels), 10_000):  # in blocks: the counts are int64
            block = observed[start:start + 10_000]
            block[:] = np.log1p(rng.poisson(2.0, size=block.shape))
        predicted = rng.uniform(0.1, 3.0, size=(k + 1, 1, n_genes)).astype(np.float32)
        return predicted, observed, labels, kds, genes

    quality.score_predictions(*case(2), control, 0, False)  # warm-up: imports, polars' first calls
    gc.collect()
    start_rss = rss_mb()
    predicted, observed, labels, kds, genes = case(n_kds)
    started = time.perf_counter()
    quality.score_predictions(predicted, observed, labels, kds, genes, control, 0, False)
    return {"seconds": time.perf_counter() - started, "above_mb": peak_mb() - start_rss,
            "observed_mb": observed.nbytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.toml")
    parser.add_argument("--n-kds", type=int, default=1035)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--set-size", type=int, default=128)
    parser.add_argument("--n-draws", type=int, default=4)
    parser.add_argument("--cells-per-kd", type=int, default=100, help="observed cells per KD at the projected size")
    parser.add_argument("--n-controls", type=int, default=10000, help="observed control cells at the projected size")
    parser.add_argument("--off-at-size", action="store_true",
                        help="also measure cell-eval without DE at the projected size, on synthetic cells")
    parser.add_argument("--child", choices=MODES + ("off-at-size",), help=argparse.SUPPRESS)  # in its own process
    args = parser.parse_args()
    if args.child == "off-at-size":
        print(json.dumps(measure_off_at_size(args.n_kds, args.n_genes, args.cells_per_kd, args.n_controls)))
        return
    if args.child:
        print(json.dumps(measure(args.config, args.child == "on")))
        return

    config = load_config(args.config)
    demo.ensure_demo(config)
    analysis.run(config, progress=False)
    def child(mode: str) -> dict:
        sizes = [f"--{name}={getattr(args, name.replace('-', '_'))}" for name in
                 ("n-kds", "n-genes", "cells-per-kd", "n-controls")]
        done = subprocess.run([sys.executable, __file__, "--config", args.config, "--child", mode, *sizes],
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    runs = {mode: child(mode) for mode in MODES}
    on, off = runs["on"], runs["off"]
    k, g, n_pred, n_obs_kd, n_ctrl = (on[key] for key in ("k", "g", "n_pred", "n_obs_kd", "n_ctrl"))
    print(f"demo line {on['cell_line']}: K = {k}, G = {g}, predicted cells per KD {n_pred} (R·S), observed per KD "
          f"{n_obs_kd:.0f}, observed controls {n_ctrl}; DE metrics on and off, each in its own process")
    print(f"  {'':<58} {'DE on':>9} {'DE off':>9} {'on/off':>7}")
    for name in on["timings"]:
        a, b = on["timings"][name], off["timings"][name]
        print(f"  {name:<58} {a:7.1f} s {b:7.1f} s {a / b:6.1f}×")
    total = {mode: sum(run["timings"].values()) for mode, run in runs.items()}
    print(f"  {'total':<58} {total['on']:7.1f} s {total['off']:7.1f} s {total['on'] / total['off']:6.1f}×")
    above = {mode: run["peak_mb"] - run["start_rss_mb"] for mode, run in runs.items()}
    print(f"  {'peak RSS above the RSS at the start (MB)':<58} {above['on']:7.0f}   {above['off']:7.0f}   "
          f"{above['on'] / above['off']:6.1f}×")
    for mode, run in runs.items():
        note = "" if run["peak_mb"] > run["peak_before_mb"] else " (the run's own peak was higher: an upper bound)"
        print(f"    DE {mode}: RSS at the start {run['start_rss_mb']:.0f} MB, process peak {run['peak_mb']:.0f} MB"
              f"{note}; predictions held {run['predicted_mb']:.1f} MiB, observed cells {run['observed_mb']:.1f} MiB")

    K, G, S, R = args.n_kds, args.n_genes, args.set_size, args.n_draws
    # the predicted pair; the observed cells, the baseline's and the ceiling's two halves (each half the cells)
    de_demo = k * g * (n_pred + n_pred) + 3 * k * g * (n_obs_kd + n_ctrl)
    de_seed = K * G * (R * S + R * S) + 3 * K * G * (args.cells_per_kd + args.n_controls)
    obs_ratio = (K * args.cells_per_kd + args.n_controls) * G / ((k * n_obs_kd + n_ctrl) * g)
    de_part = max(on["timings"][SCORE] - off["timings"][SCORE], 0.0)
    score_on = de_part * de_seed / de_demo + off["timings"][SCORE] * obs_ratio
    score_off = off["timings"][SCORE] * obs_ratio
    gb = lambda n_cells: n_cells * G * 4 / 1e9  # a float32 matrix of n_cells × G
    predicted, observed = gb((K + 1) * R * S), gb(K * args.cells_per_kd + args.n_controls)
    print(f"projected at K = {K:,}, G = {G:,}, S = {S}, R = {R}, {args.cells_per_kd} observed cells per KD, "
          f"{args.n_controls:,} controls (same CPU and threads):")
    print(f"  cell-eval: DE on ≈ {score_on / 3600:.2f} h (DE work × {de_seed / de_demo:.0f}, the rest × "
          f"{obs_ratio:.0f}), DE off ≈ {score_off / 60:.1f} min; {score_on / score_off:.0f}× (pdex uses every core: "
          f"divide the DE part by the core ratio on a larger node)")
    print(f"  memory, DE on: the predicted cells {predicted:.1f} GB float32, one buffer that is cell-eval's AnnData X "
          f"(before: a second, concatenated copy, +{predicted:.1f} GB); peak ≈ 3 × buffer + observed cells ≈ "
          f"{3 * predicted + observed:.1f} GB (cell-eval's log-norm check, np.modf, copies X twice)")
    print(f"  memory, DE off: {(K + 1) * G * 4 / 1e6:.0f} MB of group means; the observed cells {observed:.1f} GB "
          f"float32 set the peak (the perturbed-mean ceiling's cells: the perturbed cells twice, "
          f"{2 * gb(K * args.cells_per_kd):.1f} GB, and the log-norm check's two copies of them)")
    if args.off_at_size:
        at_size = child("off-at-size")
        print(f"measured at that size, DE off (synthetic cells, {at_size['observed_mb'] / 1024:.2f} GiB observed): "
              f"cell-eval {at_size['seconds'] / 60:.1f} min, peak RSS above the start {at_size['above_mb']:.0f} MB "
              f"(the observed cells included)")


if __name__ == "__main__":
    main()

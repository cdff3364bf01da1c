"""Benchmark: the whole pipeline on the genome-scale screen at several sizes — wall time and peak memory per stage,
and each stage's growth exponent.

    python benchmarks/bench_scale.py [--kds 1000 3000 10000] [--folder /tmp/screens] [--executor local|ray]
                                     [--out benchmarks/results/scale_cpu.txt] [--plot scale_cpu.png]
    python benchmarks/bench_scale.py --rows benchmarks/results/scale_cpu.json --plot benchmarks/results/scale_cpu.png

Each size is the first K KDs of one 10,000-KD world (`analysis.datasets.screen`: nested KD sets), written fresh and
analysed in its own process from an empty cache, so each process's memory is its own. Per stage: the wall time
between the stage's start and the writing of its record, and the peak resident memory sampled every 0.1 s while it
ran (the process's, so it includes what earlier stages left alive). The growth exponent b of each stage is the
least-squares slope of log time on log K (time ∝ K^b) over the sizes run.

The stage boundaries are read by wrapping `StageDir.ensure` in the measuring process (instrumentation only: the
stage computes as in any run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def measure_one(n_kds: int, folder: Path, executor: str) -> list[dict]:
    """Build the screen of `n_kds` KDs in `folder`, run the pipeline, return one row per stage (and the build)."""
    from analysis import run
    from analysis.datasets import screen
    from analysis.store import cache

    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.perf_counter(), _rss_mb()))
            time.sleep(0.1)

    spans: list[tuple[str, float, float]] = []
    original = cache.StageDir.ensure

    def timed(self, compute, contents=True):
        started = time.perf_counter()
        try:
            return original(self, compute, contents)
        finally:
            spans.append((Path(self.path).parent.name, started, time.perf_counter()))

    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    config = screen.build_screen(folder, n_kds, executor=executor)
    spans.append(("build", started, time.perf_counter()))
    cache.StageDir.ensure = timed
    try:
        results = run(config, progress=False)
    finally:
        cache.StageDir.ensure = original
        done.set()
    rows = []
    for name, start, stop in spans:
        inside = [mb for t, mb in samples if start <= t <= stop] or [_rss_mb()]
        rows.append({"kds": n_kds, "stage": name, "seconds": stop - start, "peak_mb": max(inside)})
    rows.append({"kds": n_kds, "stage": "verdict", "call": results.routing.verdict.call,
                 "use": results.routing.verdict.use, "n_clusters": int(results.effects.labels.max())})
    return rows


def growth(table: dict, stage: str, sizes: list[int]) -> float:
    points = [(k, table[(k, stage)]) for k in sizes if (k, stage) in table and table[(k, stage)] > 0]
    if len(points) < 2:
        return float("nan")
    k, t = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(k, t, 1)[0])


def report(rows: list[dict], sizes: list[int]) -> str:
    stages = list(dict.fromkeys(r["stage"] for r in rows if r["stage"] != "verdict"))
    seconds = {(r["kds"], r["stage"]): r["seconds"] for r in rows if "seconds" in r}
    memory = {(r["kds"], r["stage"]): r["peak_mb"] for r in rows if "peak_mb" in r}
    head = f"{'stage':<14}" + "".join(f"{f'K={k:,} s':>13}{'peak MB':>9}" for k in sizes) + f"{'exponent b':>12}"
    lines = [head, "-" * len(head)]
    for stage in stages:
        cells = "".join(f"{seconds.get((k, stage), float('nan')):>13.1f}{memory.get((k, stage), float('nan')):>9.0f}"
                        for k in sizes)
        lines.append(f"{stage:<14}{cells}{growth(seconds, stage, sizes):>12.2f}")
    totals = {k: sum(v for (kk, s), v in seconds.items() if kk == k and s != "build") for k in sizes}
    lines.append(f"{'pipeline':<14}" + "".join(f"{totals[k]:>13.1f}{max(memory.get((k, s), 0) for s in stages):>9.0f}"
                                          for k in sizes)
                 + f"{growth({(k, 'all'): totals[k] for k in sizes}, 'all', sizes):>12.2f}")
    for r in rows:
        if r["stage"] == "verdict":
            lines.append(f"K = {r['kds']:,}: {r['call']}, geometry {r['use']}, {r['n_clusters']} clusters")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """The cost curve as a PNG: wall time against K per stage, both axes logarithmic (a straight line of slope b)."""
    import altair as alt
    import pandas as pd

    frame = pd.DataFrame([r for r in rows if "seconds" in r and r["stage"] != "build"])
    totals = frame.groupby("kds", as_index=False)["seconds"].sum().assign(stage="whole pipeline")
    frame = pd.concat([frame, totals], ignore_index=True)
    chart = alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("kds:Q", scale=alt.Scale(type="log"), title="KDs (K)"),
        y=alt.Y("seconds:Q", scale=alt.Scale(type="log"), title="wall time (s)"),
        color=alt.Color("stage:N", title="stage"), tooltip=["stage", "kds", alt.Tooltip("seconds:Q", format=".1f")]
    ).properties(width=420, height=260, title="Cost curve of the pipeline on the genome-scale screen")
    chart.save(str(path), ppi=150)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kds", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/screens"))
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--plot", type=Path, help="also draw the cost curve into this PNG")
    parser.add_argument("--rows", type=Path, help="draw --plot from these measured rows (a --out .json) and stop")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size, print JSON rows
    args = parser.parse_args()
    if args.rows:
        plot(json.loads(args.rows.read_text()), args.plot)
        return
    if args.one:
        print(json.dumps(measure_one(args.one, args.folder / f"screen-{args.one}", args.executor)))
        return
    rows = []
    for n_kds in args.kds:
        out = subprocess.run([sys.executable, __file__, "--one", str(n_kds), "--folder", str(args.folder),
                              "--executor", args.executor], check=True, capture_output=True, text=True).stdout
        rows += json.loads(out.strip().splitlines()[-1])
        print(f"K = {n_kds:,} done", file=sys.stderr)
        if args.out:  # each size as it finishes: a long run that is stopped keeps what it measured
            args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    import platform

    text = (f"# bench_scale: {platform.node()}, {__import__('os').cpu_count()} CPUs, executor {args.executor}\n"
            + report(rows, args.kds))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()

"""The prior-work comparison and the appendix: the calibration tables, the configuration as it was used, the
environment of the analysis and of this rendering, hashes, cache folders and stage timings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...config import GENESETS_DIR
from ...results import USES, Results
from .. import prose
from ..formatting import Md, breakable, fmt, markdown_table
from .methods import SINGLE_LINE, config_file, config_relative


def prior_work_table(results: Results) -> Md:
    frame = prose.prior_work_table(results).rename(columns={"prior": "Prior", "finding": "Finding",
                                                     "question": "What this tests", "this_run": "This run"})
    return markdown_table(frame, [7, 22, 22, 40])


def calibration_frame(stored: dict | None) -> pd.DataFrame | None:
    """The calibration table (`benchmarks/calibration.py` writes it; `datasets.calibration.stored_table` reads it):
    per world, the rejection rates of the two tests that decide and of the original plan's rank-sum test, and the
    share of each call and of the calls that would be wrong in that world."""
    if stored is None:
        return None
    rows = []
    for rates in stored["rates"]:
        rej = rates["rejections"]
        pct = (lambda v: f"{100 * v:.1f}%")
        partial = f"; partial Mantel {pct(rej['partial Mantel'])}" if "partial Mantel" in rej else ""
        rows.append({"World (replicates)": f"{breakable(rates['world'])} ({rates['n_replicates']:,}{partial})",
                     "Mantel": pct(rej["Mantel (studentized)"]), "Contrast": pct(rej["cluster contrast (studentized)"]),
                     "Rank-sum": pct(rej["pair-level rank-sum"]),
                     "Calls: circuits / per-KD / global / unreliable": " / ".join(
                         pct(rates["calls"].get(call, 0.0)) for call in ("cluster circuits", "per-KD",
                                                                         "global readout", "unreliable")),
                     "False calls": pct(rates["false_rate"]) if rates.get("false_calls") else "—"})
    return pd.DataFrame(rows)


def intervention_calibration_table(stored: dict | None) -> Md:
    """The interventions' calibration (`benchmarks/calibration.py` writes it; `datasets.calibration.stored_table`
    reads it): per world, the substitution test's rejection rate and the share of each answer, wrong ones marked."""
    if stored is None:
        return Md("The interventions' calibration is written by `python benchmarks/calibration.py`; it was not "
                  "found here.")
    pct = (lambda v: f"{100 * v:.1f}%")
    rows = [{"World (replicates)": f"{breakable(r['world'])} ({r['n_replicates']:,}"
                                   + (f", {r['n_modules']} modules)" if r.get("n_modules") else ")"),
             "Planted": r["expected"], "Rejects": pct(r["rejection"]),
             "Used / partly / not / undecided": " / ".join(pct(r["uses"].get(u, 0.0)) for u in USES),
             "Wrong answer": f"{pct(r['false_rate'])} ± {pct(r['false_se'])}",
             "Mean gain / excess": f"{fmt(r['mean_gain'], 3)} / {fmt(r.get('mean_excess', float('nan')), 3)}"}
            for r in stored["rates"]]
    return markdown_table(pd.DataFrame(rows), [26, 10, 9, 26, 15, 14], "llrrrr")


def over_size(stored: dict | None) -> Md:
    """The worlds where a deciding test rejects more often than its level allows (above α + 2 binomial SE in a
    world where routing does not follow the clusters), each with its rate and the false-call rate that shows what
    protects the call; or that none does."""
    if stored is None:
        return Md("")
    deciding = ("Mantel (studentized)", "cluster contrast (studentized)")
    said = []
    for rates in stored["rates"]:
        false = rates.get("false_calls") or ()
        if "cluster circuits" not in false:  # a world with planted cluster sharing: a rejection is power, not size
            continue
        n, alpha = rates["n_replicates"], rates["alpha"]
        over = [(name, rates["rejections"][name]) for name in deciding
                if rates["rejections"][name] > alpha + 2 * (alpha * (1 - alpha) / n) ** 0.5]
        if over:
            tests = " and ".join(f"the {name.split(' (')[0]} rejects {100 * rate:.1f} % ± "
                                 f"{100 * (rate * (1 - rate) / n) ** 0.5:.1f} %" for name, rate in over)
            said.append(f"in the {rates['world']} world ({n:,} replicates) {tests}, yet it is called cluster circuits "
                        f"in {100 * rates['calls'].get('cluster circuits', 0.0):.1f} % (false calls "
                        f"{100 * rates['false_rate']:.1f} %)")
    if not said:
        return Md("No deciding test rejects more often than its level allows (α + 2 SE) in a world without cluster "
                  "sharing.")
    return Md("A deciding test is over its size " + "; ".join(said) + ". What protects the call there is what it "
              "needs besides a rejection: both deciding rows, a same − cross share of the KD-specific energy of at "
              "least the minimum (a structure of a few 1/K, which the estimated common direction leaves when the "
              "noise's size follows the modules, is significant but smaller), and, where the responses are split, "
              "a material share of each response produced by the KD-specific routing.")


def calibration_table(stored: dict | None) -> Md:
    frame = calibration_frame(stored)
    if frame is None:
        return Md("The calibration table is written by `python benchmarks/calibration.py`; it was not found here.")
    return markdown_table(frame, [28, 11, 11, 11, 27, 12], "lrrrrr")


def config_values(results: Results) -> dict:
    """The configuration as it was used: paths relative to the config file, defaults resolved to what the run took
    (K KDs, S cells a set, the device), so the table agrees with the text."""
    cfg, prov = results.config, results.provenance
    described = cfg.describe()
    values = {}
    for field, value in described.items():
        if field in ("run_dir", "h5ad", "cache_dir"):
            value = config_relative(results, value)
        elif field == "gene_sets":
            value = ", ".join(_gene_set_name(results, v) for v in value) or "none"
        elif field == "kds":
            value = (f"{', '.join(value)} ({prov['n_kds']} KDs)" if value
                     else f"all {prov['n_kds']} KDs of the perturbation map in the cell line")
        elif field == "set_size":
            value = f"{prov['set_size']}" + (" (the model's cell_set_len)" if not value else "")
        elif field == "tangents_per_call" and not value:
            value = "0 (chosen for the device and set size)"
        elif field == "space":
            value = f"{value}: {prov['space']}" if "space" in prov else value
        elif field == "device":
            value = f"{value}: {prov['device']}" if value == "auto" else value
        elif field == "cell_lines":
            value = (", ".join(value) + (" (the first is the primary line)" if len(value) > 1 else "")
                     if value else SINGLE_LINE)
        values[field] = value
    return values


def _gene_set_name(results: Results, path) -> str:
    """A bundled library by its name (its path inside the installed package means nothing to a reader), else the
    file relative to the config."""
    return f"{Path(path).stem} (bundled)" if Path(path).parent == GENESETS_DIR else config_relative(results, path)


def config_table(results: Results) -> Md:
    values = config_values(results)
    frame = pd.DataFrame({"Field": list(values), "Value": [f"`{v}`" for v in values.values()]})
    return markdown_table(frame, [12, 40])


def environment_table(results: Results, rendering: list[tuple[str, str]]) -> Md:
    """Software and hardware: the operating system's name only (the host's kernel string identifies a machine, not
    the environment), the versions the analysis ran with, and this rendering's commit and tools (`rendering`:
    `store.inputs.rendering_versions()`)."""
    prov = results.provenance
    rows = [("Python", prov["python"]), ("Operating system", prov["platform"].split("-")[0]), ("Device", prov["device"]),
            ("CPU cores", prov["cpu_count"])]
    rows += [(name, version) for name, version in prov["versions"].items()]
    rows += rendering
    return markdown_table(pd.DataFrame(rows, columns=["Component", "Version / value"]), [12, 30])


def provenance_table(results: Results) -> Md:
    """Hashes, cache folders and stage timings."""
    prov, paths = results.provenance, results.stage_paths
    rows = [("Config file", f"`{config_file(results)}`"),
            ("Checkpoint sha256", f"`{prov['checkpoint_sha256']}`"), ("Control data sha256", f"`{prov['data_sha256']}`"),
            ("Input key (model + data + code)", f"`{prov['input_key']}`"), ("Code version", f"`{prov['code_version']}`")]
    rows += [(f"Cache: {stage}", f"`{config_relative(results, path)}`") for stage, path in paths.items()]
    labels = {"effects": "Effects (ΔY, clusters, enrichment)", "jacobians": "Jacobians",
              "routing": "Routing (Gram, SVD, statistics)"}
    for line in results.lines:
        where_line = f", {line.cell_line}" if len(results.lines) > 1 else ""
        device = line.routing.jacobian_device
        for stage, value in line.routing.seconds.items():
            where = f" on {device}" if stage == "jacobians" and device else ""
            rows.append((f"Time: {labels.get(stage, stage)}{where_line}", f"{value:,.1f} s{where}"))
    if results.across is not None:
        rows.append(("Time: across cell lines (cosines, paired test)", f"{results.across.seconds:,.1f} s"))
    return markdown_table(pd.DataFrame(rows, columns=["Item", "Value"]), [16, 45])

"""What the pipeline leaves in the cache, as the report and the plots read it (scanpy's `pl` reading what `tl` stored).

Frozen dataclasses of arrays and frames, and the readers that rebuild them from verified stage folders. Nothing here
computes, and nothing imports torch, the model loader or the demo trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import cache, clustering, consistency, routing, verdict
from .config import AnalysisConfig


@dataclass(frozen=True)
class Effects:
    """ΔY and the perturbation representations, for the K KDs in `kd_names` order.

    delta_y [K, G] (output units, e.g. log-normalised expression); delta_y_draws [R, K, G];
    pert_repr [K, H] and control_repr [H] (pert_encoder outputs); draw_cells [R, S] control-cell rows.
    """

    kd_names: tuple
    gene_names: tuple
    delta_y: np.ndarray
    delta_y_draws: np.ndarray
    pert_repr: np.ndarray
    control_repr: np.ndarray
    draw_cells: np.ndarray

    def reproducibility(self) -> pd.DataFrame:
        """Per KD: mean cosine between ΔY of different draws, and the split-half Pearson r (first vs second half of draws)."""
        draws = self.delta_y_draws
        n_draws = draws.shape[0]
        unit = draws / np.maximum(np.linalg.norm(draws, axis=2, keepdims=True), 1e-12)
        cos = np.einsum("rkg,skg->krs", unit, unit)
        off = ~np.eye(n_draws, dtype=bool)
        draw_cosine = cos[:, off].mean(axis=1) if n_draws > 1 else np.full(len(self.kd_names), np.nan)
        half = n_draws // 2
        if half:
            a, b = draws[:half].mean(0), draws[half:].mean(0)
            a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
            split = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        else:
            split = np.full(len(self.kd_names), np.nan)
        return pd.DataFrame({"kd": self.kd_names, "draw_cosine": draw_cosine, "split_half_r": split,
                             "effect_norm": np.linalg.norm(self.delta_y, axis=1)})


@dataclass(frozen=True)
class Part1:
    """Part 1 results. kd_table: kd, cluster, reproducibility; ora / gsea: enrichment tables (query = 'cluster c')."""

    key: str
    effects: Effects
    kd_table: pd.DataFrame
    silhouette: pd.DataFrame
    bootstrap_ari: np.ndarray
    order: np.ndarray
    ora: pd.DataFrame
    gsea: pd.DataFrame
    seconds: float

    @property
    def labels(self) -> np.ndarray:
        return self.kd_table["cluster"].to_numpy()

    @property
    def c_out(self) -> np.ndarray:
        return clustering.cosine_similarity(self.effects.delta_y)


@dataclass(frozen=True)
class Part3:
    """Part 2–3 results: similarity matrices [K, K], SVD summaries, statistics, verdict, prior-work table."""

    key: str
    jacobian_key: str
    c_out: np.ndarray
    c_jac: np.ndarray
    c_rep: np.ndarray
    variance_explained: np.ndarray
    kd_scores: np.ndarray  # [K, A] routing SVD (unit-norm Jacobians)
    gene_loadings: np.ndarray  # [A, G]
    output_kd_scores: np.ndarray  # [K, A] SVD of unit-norm ΔY
    output_gene_loadings: np.ndarray  # [A, G]
    evidence: routing.RoutingEvidence
    svd: routing.SvdEvidence
    svd_enrichment: pd.DataFrame
    linearity: pd.DataFrame
    verdict: verdict.Verdict
    prior_work: pd.DataFrame
    seconds: dict
    autograd_check: dict  # {"kd", "relative_error"}: one stored J_k against reverse mode on this run


@dataclass(frozen=True)
class LineResults:
    """Parts 1–3 of one cell line (`cell_line` None: the data's only cell type) and its provenance."""

    cell_line: str | None
    part1: Part1
    part3: Part3
    provenance: dict


@dataclass(frozen=True)
class Across:
    """Routing across cell lines: per-KD cosines between the primary line and each other line, and the paired
    comparisons (`consistency`). table: line_a, line_b, kd, cluster (primary line's), cos_output, cos_jacobian, their
    baselines and KD-specific values, difference (specific) and raw_difference; tests: per pair of lines its
    `PairedDifference`s (KD-specific, raw); prior_work: the NB04 row's text."""

    key: str
    table: pd.DataFrame
    tests: tuple
    prior_work: str
    seconds: float

    @property
    def pairs(self) -> tuple:
        """(primary line, other line) for each comparison, in order."""
        return tuple(dict.fromkeys((t.line_a, t.line_b) for t in self.tests))

    def pair_tests(self, line_a: str, line_b: str) -> tuple:
        """The paired comparisons of one pair of lines: KD-specific first, then raw."""
        return tuple(t for t in self.tests if (t.line_a, t.line_b) == (line_a, line_b))


@dataclass(frozen=True)
class Results:
    """Every line's results; the first listed line is the primary one, which `part1`, `part3` and the report's
    main sections show."""

    config: AnalysisConfig
    lines: tuple
    across: Across | None = None

    @property
    def part1(self) -> Part1:
        return self.lines[0].part1

    @property
    def part3(self) -> Part3:
        return self.lines[0].part3

    @property
    def provenance(self) -> dict:
        return self.lines[0].provenance

    @property
    def prior_work(self) -> pd.DataFrame:
        """The primary line's prior-work table, its NB04 row answered across lines when several were analysed."""
        table = self.part3.prior_work.copy()
        if self.across is not None:
            table.loc[table["prior"] == "NB04", "this_run"] = self.across.prior_work
        return table


def read_part1(stage: cache.StageDir, record: dict) -> Part1:
    """Part 1 from its stage folder; `record` is the stage's verified completion record."""
    names = cache.read_json(stage / "names.json")
    with np.load(stage / "effects.npz") as arrays:
        a = {k: arrays[k] for k in arrays.files}
    effects = Effects(tuple(names["kd_names"]), tuple(names["gene_names"]), a["delta_y"], a["delta_y_draws"],
                      a["pert_repr"], a["control_repr"], a["draw_cells"])
    return Part1(stage.key, effects, pd.read_parquet(stage / "kds.parquet"), pd.read_parquet(stage / "silhouette.parquet"),
                 a["bootstrap_ari"], a["order"], pd.read_parquet(stage / "ora.parquet"),
                 pd.read_parquet(stage / "gsea.parquet"), record["seconds"])


def read_part3(stage: cache.StageDir, record: dict, jac_key: str, seconds: dict, autograd_check: dict) -> Part3:
    with np.load(stage / "matrices.npz") as arrays:
        a = {k: arrays[k] for k in arrays.files}
    evidence = cache.read_json(stage / "evidence.json")
    return Part3(stage.key, jac_key, a["c_out"], a["c_jac"], a["c_rep"], a["variance_explained"], a["kd_scores"],
                 a["gene_loadings"], a["output_kd_scores"], a["output_gene_loadings"],
                 routing.RoutingEvidence.from_dict(evidence["routing"]), routing.SvdEvidence.from_dict(evidence["svd"]),
                 pd.read_parquet(stage / "svd_enrichment.parquet"), pd.read_parquet(stage / "linearity.parquet"),
                 verdict.Verdict.from_dict(cache.read_json(stage / "verdict.json")),
                 pd.read_parquet(stage / "prior_work.parquet"), {**seconds, "part3": record["seconds"]},
                 autograd_check)


def read_across(stage: cache.StageDir, record: dict) -> Across:
    tests = tuple(consistency.PairedDifference.from_dict(t) for t in cache.read_json(stage / "tests.json"))
    return Across(stage.key, pd.read_parquet(stage / "kds.parquet"), tests, record["prior_work"], record["seconds"])


def result_paths(results: Results) -> dict:
    """The cache folders of every stage: the primary line's, then each other line's, then the across-lines stage."""
    c = Path(results.config.cache_dir)
    paths = {}
    for line in results.lines:
        suffix = f" ({line.cell_line})" if len(results.lines) > 1 else ""
        paths |= {f"part1{suffix}": str(c / "part1" / line.part1.key),
                  f"jacobians{suffix}": str(c / "jacobians" / line.part3.jacobian_key),
                  f"part3{suffix}": str(c / "part3" / line.part3.key)}
    if results.across is not None:
        paths["across"] = str(c / "across" / results.across.key)
    return paths

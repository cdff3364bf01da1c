"""The one path from stage folders to the results container: each reader rebuilds a stage's record from its
verified files (scanpy's `read_h5ad` role)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..results import (
    AcrossResult,
    DepthRouting,
    EffectsResult,
    InterchangeTest,
    InterventionsResult,
    PairedDifference,
    QualityResult,
    Responses,
    RoutingEvidence,
    RoutingResult,
    SteeringResult,
    SubstitutionTest,
    SvdEvidence,
    Verdict,
)
from . import codec
from .cache import StageDir, read_json


def _arrays(path) -> dict:
    with np.load(path) as arrays:
        return {k: arrays[k] for k in arrays.files}


def read_effects(stage: StageDir, record: dict) -> EffectsResult:
    """The effects stage from its folder; `record` is the stage's verified completion record."""
    names = read_json(stage / "names.json")
    a = _arrays(stage / "effects.npz")
    responses = Responses(tuple(names["kd_names"]), tuple(names["gene_names"]), a["delta_y"], a["delta_y_draws"],
                          a["pert_repr"], a["control_repr"], a["draw_cells"])
    return EffectsResult(stage.key, responses, pd.read_parquet(stage / "kds.parquet"), a["c_out"],
                         pd.read_parquet(stage / "silhouette.parquet"), a["bootstrap_ari"], a["order"],
                         pd.read_parquet(stage / "ora.parquet"), pd.read_parquet(stage / "gsea.parquet"),
                         record["seconds"])


def read_interventions(stage: StageDir, record: dict) -> InterventionsResult:
    tests = read_json(stage / "tests.json")
    return InterventionsResult(stage.key, pd.read_parquet(stage / "kds.parquet"),
                               codec.decode(SubstitutionTest, tests["substitution"]),
                               codec.decode(InterchangeTest, tests["interchange"]), record["n_sets"],
                               record["seconds"])


def read_routing(stage: StageDir, record: dict, jacobians: StageDir, jacobian_record: dict,
                 effects_seconds: float) -> RoutingResult:
    """The routing stage from its folder, with what the Jacobian stage's record says (time, device, check)."""
    a = _arrays(stage / "matrices.npz")
    evidence = read_json(stage / "evidence.json")
    seconds = {"effects": effects_seconds, "jacobians": jacobian_record["seconds"], "routing": record["seconds"]}
    return RoutingResult(stage.key, jacobians.key, a["c_out"], a["c_jac"], a["c_rep"], a["variance_explained"],
                         a["kd_scores"], a["gene_loadings"], a["output_kd_scores"], a["output_gene_loadings"],
                         codec.decode(RoutingEvidence, evidence["routing"]), codec.decode(SvdEvidence, evidence["svd"]),
                         pd.read_parquet(stage / "svd_enrichment.parquet"), pd.read_parquet(stage / "linearity.parquet"),
                         codec.decode(Verdict, read_json(stage / "verdict.json")), read_json(stage / "prior_work.json"),
                         seconds, jacobian_record["autograd_check"], jacobian_record["device"], a.get("c_jac_specific"),
                         a.get("input_directions"), codec.decode(tuple[DepthRouting, ...], evidence.get("depth", [])))


def read_steering(stage: StageDir, record: dict) -> SteeringResult:
    return SteeringResult(stage.key, pd.read_parquet(stage / "steering.parquet"), tuple(record["trust_radius"]),
                          record["scale"], record["tolerance"], record["seconds"])


def read_across(stage: StageDir, record: dict) -> AcrossResult:
    tests = tuple(codec.decode(PairedDifference, t) for t in read_json(stage / "tests.json"))
    return AcrossResult(stage.key, pd.read_parquet(stage / "kds.parquet"), tests, record["seconds"])


def read_quality(stage: StageDir, record: dict) -> QualityResult:
    """Part 0 (the quality stage) from its folder."""
    facts = read_json(stage / "quality.json")
    calls = {group: (codec.decode(Verdict, found["verdict"]), codec.decode(RoutingEvidence, found["evidence"]))
             for group, found in read_json(stage / "sensitivity.json").items()}
    sensitivity, evidence = calls.pop("better than baseline")
    return QualityResult(stage.key, pd.read_parquet(stage / "kds.parquet"), pd.read_parquet(stage / "overall.parquet"),
                         facts["status"], tuple(facts["unscored"]),
                         None if facts["held_out"] is None else tuple(facts["held_out"]), facts["split_source"],
                         tuple(facts["well_predicted"]), sensitivity, evidence, record["seconds"], record["peak_mb"],
                         facts["cell_eval"], calls, tuple(facts["metrics"]), facts["de_metrics"],
                         facts["de_reason"])

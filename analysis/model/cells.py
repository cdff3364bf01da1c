"""The analysis's side of loading a run, the same for every model kind: the device and dtype, the control cells of
the line from the .h5ad, and which KDs are analysed."""

from __future__ import annotations

import numpy as np
import torch

from ..config import AnalysisConfig
from ..errors import InputError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("config field device", f"'{name}' requested but CUDA is not available on this machine")
    return torch.device(name)


def load_controls(config: AnalysisConfig, input_dim: int):
    """Control cells [N, input_dim] of the target cell line, the data's perturbation labels there, and its gene names."""
    import anndata as ad

    path = config.h5ad
    if not path.is_file():
        raise InputError(str(path), "control-cell .h5ad not found")
    try:
        adata = ad.read_h5ad(path, backed="r")
    except Exception as exc:
        raise InputError(str(path), f"not a readable .h5ad ({type(exc).__name__})") from None
    obs = adata.obs
    for field_name, column in (("perturbation_column", config.perturbation_column), ("cell_type_column", config.cell_type_column)):
        if column not in obs.columns:
            raise InputError(f"{path} obs['{column}']", f"column missing (config field {field_name}); obs has {list(obs.columns)[:10]}")
    in_line = np.ones(adata.n_obs, dtype=bool)
    if config.cell_line is None:
        # Mixing lines would pool their controls into one basal distribution (and one set of ΔY): refuse.
        present = sorted(obs[config.cell_type_column].astype(str).unique())
        if len(present) > 1:
            raise InputError(f"{path} obs['{config.cell_type_column}']",
                             f"{len(present)} cell types present ({', '.join(present[:6])}{', …' if len(present) > 6 else ''}); "
                             "set [data] cell_line to one of them, or to a list to analyse each")
    else:
        in_line = (obs[config.cell_type_column].astype(str) == config.cell_line).to_numpy()
        if not in_line.any():
            seen = sorted(obs[config.cell_type_column].astype(str).unique())[:10]
            raise InputError(f"{path} obs['{config.cell_type_column}']", f"no cells of cell line '{config.cell_line}' (found {seen})")
    labels = obs[config.perturbation_column].astype(str).to_numpy()
    is_control = in_line & (labels == config.control_label)
    if not is_control.any():
        raise InputError(f"{path} obs['{config.perturbation_column}']", f"no '{config.control_label}' control cells in cell line '{config.cell_line}'")

    if config.feature_key == "X":
        matrix = adata.X
    elif config.feature_key in adata.obsm:
        matrix = adata.obsm[config.feature_key]
    else:
        raise InputError(f"{path} obsm['{config.feature_key}']", f"feature key missing (config field feature_key); obsm has {list(adata.obsm.keys())}")
    rows = np.flatnonzero(is_control)
    controls = matrix[rows]
    controls = np.asarray(controls.toarray() if hasattr(controls, "toarray") else controls, dtype=np.float32)
    if controls.ndim != 2 or controls.shape[1] != input_dim:
        raise InputError(f"{path} {config.feature_key}", f"features have width {controls.shape[-1]}, expected the model's input_dim {input_dim}")
    if not np.isfinite(controls).all():
        bad = int((~np.isfinite(controls)).any(axis=1).sum())
        raise InputError(f"{path} {config.feature_key}", f"{bad} control cell(s) contain NaN or inf")
    data_perts = set(labels[in_line]) - {config.control_label}
    data_genes = tuple(map(str, adata.var_names)) if config.feature_key == "X" else None
    adata.file.close()
    return controls, data_perts, data_genes


def select_kds(config: AnalysisConfig, perturbation_names, data_perts: set) -> tuple:
    """The KDs to analyse: the config's list (each in the perturbation map `perturbation_names`, the control not
    among them), else every perturbation of the map that the data has in the line (all of them for a control-only
    .h5ad)."""
    if config.kds:
        unknown = [k for k in config.kds if k not in perturbation_names]
        if unknown:
            raise InputError("config field kds", f"{len(unknown)} KD(s) not in the run's perturbation map, e.g. {unknown[:5]}")
        if config.control_label in config.kds:
            raise InputError("config field kds", f"lists the control '{config.control_label}'; list knock-downs only")
        return tuple(config.kds)
    candidates = [n for n in perturbation_names if n != config.control_label]
    # A control-only .h5ad does not say which KDs the line has: then all KDs of the map are analysed.
    kds = [n for n in candidates if n in data_perts] if data_perts else candidates
    if not kds:
        raise InputError(str(config.h5ad), f"none of the run's perturbations occur in cell line '{config.cell_line}'")
    return tuple(kds)


def intra_op_threads() -> int:
    """The threads torch's CPU kernels use in this process (the Ray workers are started with the same count:
    `pipeline.executors.init_ray`)."""
    return torch.get_num_threads()

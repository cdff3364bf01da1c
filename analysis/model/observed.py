"""The observed cells prediction quality is scored against, and the run's training split.

Read only when the quality stage computes: the perturbed cells of the analysed KDs in the analysed cell line (no
other rows), with the line's control cells, in the space the model's predictions are read in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import AnalysisConfig
from ..errors import InputError
from .protocol import PerturbationModel


@dataclass(frozen=True)
class ObservedCells:
    """cells [N, G] float32 (output space, `gene_names` order): the line's control cells, then the perturbed cells
    of the analysed KDs; labels [N]: each cell's perturbation (the control label for controls)."""

    cells: np.ndarray
    labels: np.ndarray


def load_observed(config: AnalysisConfig, run: PerturbationModel) -> ObservedCells:
    """Control and KD cells of the config's cell line. InputError (one line, naming the field) when the data's
    perturbation labels in the line match none of the analysed KDs, or its gene names differ from the model's."""
    import anndata as ad

    path, column = config.h5ad, config.perturbation_column
    adata = ad.read_h5ad(path, backed="r")
    try:
        obs = adata.obs
        in_line = np.ones(adata.n_obs, dtype=bool) if config.cell_line is None else \
            (obs[config.cell_type_column].astype(str) == config.cell_line).to_numpy()
        labels = obs[column].astype(str).to_numpy()
        wanted = set(run.kd_names) | {config.control_label}
        keep = in_line & np.isin(labels, list(wanted))
        perturbed = set(labels[in_line]) - {config.control_label}
        if perturbed and not perturbed & set(run.kd_names):
            raise InputError(f"{path} obs['{column}']",
                             f"none of its {len(perturbed)} perturbation labels in the line match the run's "
                             f"perturbation map (e.g. {sorted(perturbed)[:3]}); check config field perturbation_column")
        rows = np.flatnonzero(keep)
        cells = _output_matrix(config, run, adata, rows)
    finally:
        adata.file.close()
    return ObservedCells(cells, labels[rows])


def _output_matrix(config: AnalysisConfig, run: PerturbationModel, adata, rows: np.ndarray) -> np.ndarray:
    """The rows' features in the predictions' space: the model's own input matrix when it is also the output space,
    else (a decoded run) the expression in `adata.X`, columns picked by gene name."""
    path = config.h5ad
    if run.space.decode:
        names = list(map(str, adata.var_names))
        missing = [g for g in run.gene_names if g not in set(names)]
        if missing:
            raise InputError(f"{path} var_names", f"{len(missing)} of the model's {len(run.gene_names)} output genes "
                                                  f"absent (e.g. {missing[:3]}); gene names differ from the model's")
        index = {g: i for i, g in enumerate(names)}
        matrix, columns = adata.X, [index[g] for g in run.gene_names]
    else:
        matrix = adata.X if config.feature_key == "X" else adata.obsm[config.feature_key]
        columns = None
        if config.feature_key == "X" and run.space.has_genes:
            names = tuple(map(str, adata.var_names))
            if names != tuple(run.gene_names):
                first = next((i for i, (a, b) in enumerate(zip(names, run.gene_names)) if a != b),
                             min(len(names), len(run.gene_names)))
                raise InputError(f"{path} var_names", f"gene names differ from the model's output genes (first at "
                                                      f"position {first}: data {names[first:first + 1]}, model "
                                                      f"{tuple(run.gene_names[first:first + 1])})")
    block = matrix[rows]
    block = np.asarray(block.toarray() if hasattr(block, "toarray") else block, dtype=np.float32)
    return block if columns is None else block[:, columns]


def training_split(config: AnalysisConfig, run: PerturbationModel, kd_names) -> tuple[tuple[str, ...] | None, str]:
    """(the KDs of `kd_names` held out of training in the config's cell line, where that came from); (None, "") when
    not known: the config field held_out_kds first, else what the run folder says (`PerturbationModel.training_split`:
    for STATE, the cell_load TOML its config.yaml names)."""
    if config.held_out_kds:
        return tuple(k for k in kd_names if k in set(config.held_out_kds)), "config field held_out_kds"
    return run.training_split(config.cell_line, kd_names)

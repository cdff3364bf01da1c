"""Predicted cells, as `state tx infer` predicts them: the model's output for every cell of a set, not only the set
mean, on the same control draws and set size the effects stage used (`Responses.draw_cells`).

The per-cell outputs are read from the real forward call (`forward.mean_output`) through a forward hook on the
module whose output is a cell's expression (the model itself, or its gene decoder when the space is decoded), so the
cells scored are exactly the cells whose mean is ΔY's E[Y].
"""

from __future__ import annotations

import numpy as np
import torch

from .forward import mean_output
from .load import LoadedRun


def set_cells(run: LoadedRun, features: torch.Tensor, basal: torch.Tensor) -> torch.Tensor:
    """Every cell's output [B, S, G] for B sets (features [B, P], basal [B, S, N]), from the same call as
    `mean_output` (whose mean over S they reproduce)."""
    captured = []
    module = run.model.gene_decoder if run.space.decode else run.model
    handle = module.register_forward_hook(
        lambda _module, _inputs, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        means = mean_output(run.model, features, basal, run.space.decode)
    finally:
        handle.remove()
    return captured[-1].reshape(means.shape[0], basal.shape[1], -1)


@torch.no_grad()
def predict_cells(run: LoadedRun, kd_names, draw_cells: np.ndarray, kds_per_call: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted cells of each KD of `kd_names` and of the control on the draws `draw_cells` [R, S] (rows of
    run.controls): ([K, R·S, G], [R·S, G]) float32, cells in draw order. Pure; one forward call of up to
    `kds_per_call` sets per draw."""
    names = list(kd_names)
    n_cells = draw_cells.size
    cells = np.zeros((len(names), n_cells, len(run.gene_names)), dtype=np.float32)
    control = np.zeros((n_cells, len(run.gene_names)), dtype=np.float32)
    control_features = run.features([run.control_label])
    for r, rows in enumerate(draw_cells):
        basal = torch.as_tensor(run.controls[rows], device=run.device, dtype=run.dtype)[None]
        at = slice(r * len(rows), (r + 1) * len(rows))
        control[at] = set_cells(run, control_features, basal)[0].float().cpu().numpy()
        for start in range(0, len(names), kds_per_call):
            features = run.features(names[start:start + kds_per_call])
            out = set_cells(run, features, basal.expand(len(features), -1, -1))
            cells[start:start + len(features), at] = out.float().cpu().numpy()
    return cells, control

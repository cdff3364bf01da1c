"""Stage 2 — predicted effects ΔY_k = E[Y | KD k] − E[Y | control] on the same control cells.

E is the mean over a set of S control cells (cells attend to each other inside a set);
ΔY is averaged over R seeded draws of the set, and the draw-to-draw agreement is reported.
"""

from __future__ import annotations


import numpy as np
import torch
from tqdm import tqdm

from .load import LoadedRun
from .results import Effects
from .model_call import encode_perturbations, mean_output


def draw_control_sets(n_controls: int, set_size: int, n_draws: int, seed: int) -> np.ndarray:
    """[R, S] row indices of control cells, without replacement within a set; seeded."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n_controls, size=set_size, replace=False) for _ in range(n_draws)])


@torch.no_grad()
def compute_effects(run: LoadedRun, n_draws: int, seed: int, kds_per_call: int, progress: bool = True) -> Effects:
    """ΔY for every KD of `run.kd_names`, batched `kds_per_call` sets per forward call on the run's device."""
    draw_cells = draw_control_sets(len(run.controls), run.set_size, n_draws, seed)
    kd_names = list(run.kd_names)
    kd_onehots = run.onehots(kd_names)
    control_onehot = run.onehots([run.control_label])
    draws = np.zeros((n_draws, len(kd_names), len(run.gene_names)), dtype=np.float64)
    chunks = [slice(i, i + kds_per_call) for i in range(0, len(kd_names), kds_per_call)]
    bar = tqdm(total=n_draws * len(chunks), desc="ΔY (KD sets × draws)", disable=not progress, unit="call")
    for r, rows in enumerate(draw_cells):
        basal = torch.as_tensor(run.controls[rows], device=run.device, dtype=run.dtype)[None]
        control_mean = mean_output(run.model, control_onehot, basal)[0]
        for chunk in chunks:
            onehots = kd_onehots[chunk]
            kd_means = mean_output(run.model, onehots, basal.expand(len(onehots), -1, -1))
            draws[r, chunk] = (kd_means - control_mean).double().cpu().numpy()
            bar.update()
    bar.close()
    pert_repr = encode_perturbations(run.model, kd_onehots).double().cpu().numpy()
    control_repr = encode_perturbations(run.model, control_onehot)[0].double().cpu().numpy()
    return Effects(tuple(kd_names), run.gene_names, draws.mean(axis=0), draws, pert_repr, control_repr, draw_cells)

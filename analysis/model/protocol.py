"""What the analysis needs of a perturbation model: the `PerturbationModel` protocol, and where its outputs are read.

A model kind (`[model] kind`; today "state", arc-state's StateTransitionPerturbationModel) is an adapter in its own
folder (`model/state/`) that loads a run and satisfies this protocol. Everything else on the model side (ΔY, the
Jacobians, interventions and steering, predicted cells) takes only the protocol, so no module outside an adapter
names a model's internals (`tests/test_layout.py` holds it).

Shapes: K KDs (or representations) asked about, P the width of a perturbation's input features, H the width of the
perturbation representation (`hidden_size`), B sets, S cells per set (`set_size`), N the width of a control cell's
features (the model's input), R control draws, G output features (`gene_names`), L blocks with D-wide states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class OutputSpace:
    """The space ΔY and J are read in.

    name: "genes" or "embedding" (gene-set enrichment of responses needs genes); decode: the model's output of
    each cell goes through its gene decoder before the mean over the set (E[decoder(Y)]); description: for people,
    e.g. "embedding space X_state (2,048 dims, undecoded)".
    """

    name: str
    decode: bool
    description: str

    @property
    def has_genes(self) -> bool:
        return self.name == "genes"


class Shipped(Protocol):
    """A picklable recipe for a model on a worker without the run folder (`pipeline.executors.WorkerState`)."""

    def build(self) -> "PerturbationModel": ...


class PerturbationModel(Protocol):
    """A loaded run of one cell line: the model and the control cells it is asked about.

    The functions are the model's own forward, read where the analysis needs it; none changes the model (an adapter
    may set what its forward reads for the length of one call, and restores it). `expected_output` and
    `expected_states` are differentiable in pert_repr (forward mode, as torch.func's jvp/jacfwd take a function);
    the others run under no_grad in their callers.
    """

    kind: str  # the adapter's kind, as `[model] kind` names it ("state")
    model: torch.nn.Module  # the weights the functions read: traced Jacobian graphs are cached per module and version
    device: torch.device
    dtype: torch.dtype
    control_label: str
    kd_names: tuple  # the KDs analysed (control excluded)
    gene_names: tuple  # the G output features of `space` (genes, or `<embed_key>:<i>` in an embedding space)
    controls: np.ndarray  # [N_cells, N] control cells of the line
    set_size: int  # S
    space: OutputSpace

    @property
    def hidden_size(self) -> int:
        """H, the width of pert_repr."""

    @property
    def device_description(self) -> str:
        """e.g. "cuda:0 (NVIDIA H100 80GB HBM3)" or "cpu (x86_64)"."""

    @property
    def checkpoint(self) -> Path:
        """The file holding the weights (its digest is in the report)."""

    @property
    def run_files(self) -> tuple[Path, ...]:
        """Every file of the run folder the results depend on, the checkpoint first (cache keys hash them)."""

    def features(self, names) -> torch.Tensor:
        """[K, P] the input features of perturbations `names` (control included), on the model's device and dtype:
        what `set_means` and `set_cells` read."""

    def encode(self, names) -> torch.Tensor:
        """pert_repr [K, H] of perturbations `names`: the model's perturbation encoder on their features."""

    def set_means(self, features: torch.Tensor, cell_sets: torch.Tensor) -> torch.Tensor:
        """E[Y] per set [B, G]: the output in `space`, averaged over the S cells of each set; features [B, P] (one
        perturbation per set), cell_sets [B, S, N]."""

    def set_cells(self, features: torch.Tensor, cell_sets: torch.Tensor) -> torch.Tensor:
        """Every cell's output [B, S, G] from the same call as `set_means` (whose mean over S they reproduce)."""

    def expected_output(self, pert_repr: torch.Tensor, cell_sets: torch.Tensor) -> torch.Tensor:
        """E[Y] [B, G] with pert_repr [B, H] substituted for the encoder's output of every cell, averaged over the
        S cells and the R draw sets cell_sets [R, S, N] (the same R for every row). Differentiable in pert_repr."""

    def expected_states(self, pert_repr: torch.Tensor, cell_sets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(`expected_output` [B, G], E[h_ℓ] [L, B, D]): each of the model's L blocks' output state averaged over
        the S cells and R draw sets, from the same call (routing by depth); L = 0 for a model without blocks."""

    def ship(self) -> Shipped:
        """This model as bytes and arrays for a worker elsewhere (`Shipped.build` makes it there)."""

    def training_split(self, cell_line: str | None, kd_names) -> tuple[tuple[str, ...] | None, str]:
        """(the KDs of `kd_names` held out of training in `cell_line`, where the run folder says so); (None, "")
        when the run does not say."""


def describe_device(device: torch.device) -> str:
    """e.g. "cuda:0 (NVIDIA H100 80GB HBM3)" or "cpu (x86_64)"."""
    import platform

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return f"{device} ({name})"


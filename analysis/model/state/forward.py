"""Calling the real arc-state `forward` on sets of cells, optionally with a substituted pert_repr.

Nothing here re-implements the model: residual, ReLU, LoRA, batch and confidence tokens
all stay as the model's own `forward` has them. The perturbation representation is
replaced through a forward hook on `model.pert_encoder`, so derivatives with respect to
it are derivatives of the real forward pass. (The hooks and `cell_sentence_len` are set for
the length of one call and restored: arc-state's forward reads them; nothing outlives a call.)
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


@contextlib.contextmanager
def set_length(model, set_size: int):
    """Let `forward(padded=True)` reshape into sets of `set_size` cells (the model reads `cell_sentence_len`)."""
    saved = model.cell_sentence_len
    model.cell_sentence_len = set_size
    try:
        yield
    finally:
        model.cell_sentence_len = saved


@contextlib.contextmanager
def pert_repr_override(model, pert_repr: torch.Tensor):
    """Make `model.pert_encoder` return `pert_repr` [B, H] for every cell of set b (shape [B, S, H])."""

    def hook(_module, _inputs, output):
        return pert_repr[:, None, :].expand_as(output)

    handle = model.pert_encoder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def backbone_blocks(model) -> list[torch.nn.Module]:
    """The transformer backbone's blocks in depth order (GPT2's `h`, Llama's `layers`)."""
    backbone = model.transformer_backbone
    blocks = getattr(backbone, "h", None) or getattr(backbone, "layers", None)
    if blocks is None:
        raise TypeError(f"{type(backbone).__name__}: no block list (`h` or `layers`) to read routing by depth from")
    return list(blocks)


@contextlib.contextmanager
def block_states(model, set_size: int):
    """Collect, for each backbone block, its output hidden state averaged over the S cell positions of each set.

    Yields a list that fills with one [B, D] tensor per block (depth order) during a forward over B sets of
    `set_size` cells. A batch token (position 0) and a confidence token (last) are not cells and are left out.
    """
    first = int(bool(getattr(model, "use_batch_token", False) and getattr(model, "batch_token", None) is not None))
    states: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output  # [B, tokens, D]
        states.append(hidden[:, first:first + set_size].mean(dim=1))

    handles = [block.register_forward_hook(hook) for block in backbone_blocks(model)]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


def mean_output(model, pert_features: torch.Tensor, basal: torch.Tensor, decode: bool = False) -> torch.Tensor:
    """E[Y] per set: the model's output averaged over the S cells of each set.

    pert_features [B, P] (one perturbation per set), basal [B, S, N] control cells; decode: pass each cell's output
    through the model's gene decoder before the mean (E[decoder(Y)], the expression `state tx predict` writes).
    Returns [B, G] in the output units (log-normalised expression for gene-space runs; embedding units undecoded).
    """
    n_sets, set_size, _ = basal.shape
    batch = {
        "pert_emb": pert_features[:, None, :].expand(n_sets, set_size, -1).reshape(n_sets * set_size, -1),
        "ctrl_cell_emb": basal.reshape(n_sets * set_size, -1),
    }
    if getattr(model, "batch_encoder", None) is not None:
        # One batch for the whole analysis: the first of the run's batch map (recorded in the report).
        batch["batch"] = torch.zeros(n_sets * set_size, dtype=torch.long, device=basal.device)
    # The math kernel is the one with forward-mode AD; results equal the fused kernels' to rounding.
    with set_length(model, set_size), sdpa_kernel(SDPBackend.MATH):
        try:
            out = model(batch, padded=True)
        finally:
            # forward keeps its last token features for auxiliary losses; under torch.func those are transform
            # wrappers that outlive the call and break copy.deepcopy(model) afterwards.
            model._token_features = None
            model._batch_token_cache = None
    if isinstance(out, tuple):  # confidence token: (output, confidence)
        out = out[0]
    if decode:  # per cell, before the mean: the decoder is nonlinear, and users read decoded cells
        out = model.gene_decoder(out)
    return out.reshape(n_sets, set_size, -1).mean(dim=1)


def encode_perturbations(model, pert_features: torch.Tensor) -> torch.Tensor:
    """pert_repr = pert_encoder(features): [K, P] -> [K, H] (features: one-hot rows or e.g. gene embeddings)."""
    return model.pert_encoder(pert_features)


def expected_output(model, pert_repr: torch.Tensor, draw_sets: torch.Tensor, pert_features: torch.Tensor,
                    decode: bool = False) -> torch.Tensor:
    """E[Y] [B, G] with pert_repr [B, H] substituted, averaged over the S cells and the R draw sets [R, S, N].

    `pert_features` [P] is what the pert_encoder would have seen; its output is replaced. decode: Y is each cell's
    output through the model's gene decoder (`mean_output`).
    """
    n_kds, n_draws = pert_repr.shape[0], draw_sets.shape[0]
    per_set_repr = pert_repr.repeat_interleave(n_draws, dim=0)  # [B·R, H], KD-major
    basal = draw_sets.repeat(n_kds, 1, 1)  # [B·R, S, N]
    with pert_repr_override(model, per_set_repr):
        per_set = mean_output(model, pert_features.expand(n_kds * n_draws, -1), basal, decode)
    return per_set.reshape(n_kds, n_draws, -1).mean(dim=1)


def expected_states(model, pert_repr: torch.Tensor, draw_sets: torch.Tensor, pert_features: torch.Tensor,
                    decode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[Y] [B, G], E[h_ℓ] [L, B, D]): `expected_output` and, for each of the L backbone blocks, its output hidden
    state averaged over the S cells of a set and the R draw sets (`block_states`)."""
    n_kds, n_draws, set_size = pert_repr.shape[0], draw_sets.shape[0], draw_sets.shape[1]
    with block_states(model, set_size) as states:
        output = expected_output(model, pert_repr, draw_sets, pert_features, decode)
    per_set = torch.stack(states)  # [L, B·R, D], KD-major
    return output, per_set.reshape(len(states), n_kds, n_draws, -1).mean(dim=2)


def set_cells(model, features: torch.Tensor, basal: torch.Tensor, decode: bool = False) -> torch.Tensor:
    """Every cell's output [B, S, G] for B sets (features [B, P], basal [B, S, N]), from the same call as
    `mean_output` (whose mean over S they reproduce): read through a forward hook on the module whose output is a
    cell's expression (the model itself, or its gene decoder when decoding)."""
    captured = []
    module = model.gene_decoder if decode else model
    handle = module.register_forward_hook(
        lambda _module, _inputs, out: captured.append(out[0] if isinstance(out, tuple) else out))
    try:
        means = mean_output(model, features, basal, decode)
    finally:
        handle.remove()
    return captured[-1].reshape(means.shape[0], basal.shape[1], -1)

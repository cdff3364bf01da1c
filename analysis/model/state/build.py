"""STATE models built here rather than trained by `state tx train`: arc-state's class constructed as `state tx
train` constructs it, weights written by hand, and the run folder written as `state tx train` writes it. The
datasets (the demo's trainer, the known-answer models, the screens) and the tests build their models through these
functions only.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ...console import quiet_logs, silenced
from .run import state_transition_class


def construct_model(n_genes: int, n_perts: int, kwargs: dict, gene_names=None, batch_dim: int | None = None, *,
                    control: str, embed_key: str | None = None, embed_dim: int | None = None,
                    output_space: str = "gene", n_hvgs: int | None = None):
    """A StateTransitionPerturbationModel (arc-state's class) with `kwargs` as `state tx train` passes them.

    Gene space by default: n_genes in and out. An embedding-space run: `.obsm[embed_key]` (e.g. "X_state") of width
    `embed_dim` is the model's input and output; `output_space` ("gene", "all" or "embedding") as in the data
    config; n_hvgs: the HVG count (default n_genes). The gene decoder's `decoder_cfg` is made as `state tx train`
    makes it (the output → n_hvgs genes for "gene", n_genes for "all"; none for "embedding", nor when kwargs say
    gene_decoder_bool False, as the demo's do). kwargs must hold hidden_dim; basal_mapping_strategy defaults to
    "random"; control: the control perturbation's name. arc-state prints the whole module and logs at INFO on construction: both are silenced.
    """
    StateTransitionPerturbationModel = state_transition_class()
    kwargs = dict(kwargs)
    width, n_hvgs = embed_dim or n_genes, n_hvgs or n_genes
    gene_dim = n_hvgs if output_space == "gene" else n_genes  # state's get_lightning_module
    if output_space == "embedding":
        kwargs["gene_decoder_bool"] = False
    elif kwargs.get("gene_decoder_bool", True):
        kwargs.setdefault("decoder_cfg", dict(
            latent_dim=width, gene_dim=gene_dim, hidden_dims=kwargs.get("decoder_hidden_dims", [1024, 1024, 512]),
            dropout=kwargs.get("decoder_dropout", 0.1), residual_decoder=kwargs.get("residual_decoder", False)))
    with silenced():
        return StateTransitionPerturbationModel(
            input_dim=width, hidden_dim=kwargs.pop("hidden_dim"), output_dim=width, pert_dim=n_perts,
            batch_dim=batch_dim, gene_dim=gene_dim, hvg_dim=n_hvgs,
            basal_mapping_strategy=kwargs.pop("basal_mapping_strategy", "random"), embed_key=embed_key,
            output_space=output_space, gene_names=None if gene_names is None else list(gene_names),
            batch_size=kwargs.pop("batch_size", 4), control_pert=control, **kwargs)


def plant_weights(model, pert_repr: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, offset: float,
                  output_bias: float, cell_input: np.ndarray | None = None):
    """`model` (a GPT2-backbone STATE model with a 1-layer pert_encoder, a linear basal encoder and a 2-layer
    project_out) carrying hand-written weights in p-space (its remaining weights inert), in eval mode:
    - pert_encoder: the one-hot column k + 1 writes pert_repr [K, H] row k (column 0, the control, writes 0);
    - basal_encoder: the constant `offset` L along e_0 and −L along e_1 (the final LayerNorm's σ is then ≈ constant
      and it is ~linear in p), plus, with `cell_input` [H], input 0 of each cell times it;
    - every GPT2 block an identity on the residual stream (attention and MLP output projections zero);
    - project_out: Linear(w1 [U, H]·σ0, b1 [U]) → ReLU → Linear(w2 [G, U], bias `output_bias`), σ0 the LayerNorm's
      scale at the offset (so its first layer reads p itself).
    """
    hidden = w1.shape[1]
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    sigma0 = np.sqrt(2 * offset**2 / hidden + model.transformer_backbone.config.layer_norm_epsilon)
    with torch.no_grad():
        encoder = model.pert_encoder[0]  # Linear(P → H): column 0 is the control, column k+1 KD k
        encoder.weight.copy_(t(np.concatenate([np.zeros((1, hidden)), pert_repr]).T))
        encoder.bias.zero_()
        bias = np.zeros(hidden)
        bias[0], bias[1] = offset, -offset
        model.basal_encoder.weight.zero_()
        model.basal_encoder.bias.copy_(t(bias))
        if cell_input is not None:  # the designed value z (input 0) along e_z
            model.basal_encoder.weight[:, 0] = t(cell_input)
        for block in model.transformer_backbone.h:  # identity blocks on the residual stream
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        first, last = model.project_out[0], model.project_out[-1]
        first.weight.copy_(t(w1 * sigma0))
        first.bias.copy_(t(b1))
        last.weight.copy_(t(w2))
        last.bias.fill_(output_bias)
    return model.eval()


def write_run_directory(run_dir: Path, model, onehots: dict, var_dims: dict, state_config: dict, cell_lines: tuple,
                        trainer=None) -> None:
    """Write the files `state tx train` writes: config.yaml, var_dims.pkl, the one-hot maps, checkpoints/final.ckpt.

    With a Lightning `trainer` the checkpoint is `trainer.save_checkpoint`'s, as in `state tx train`; without one
    (a model built, not trained) it is the same Lightning format written directly.
    """
    import lightning
    import yaml

    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "checkpoints" / "final.ckpt"
    if trainer is not None:
        with quiet_logs():  # Lightning logs "`weights_only` was not set" at INFO on every save
            trainer.save_checkpoint(str(ckpt))
    else:
        torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                    "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0}, ckpt)
    torch.save({k: torch.as_tensor(v) for k, v in onehots.items()}, run_dir / "pert_onehot_map.pt")
    torch.save({"batch0": torch.ones(1)}, run_dir / "batch_onehot_map.torch")
    torch.save({line: torch.eye(len(cell_lines))[i] for i, line in enumerate(cell_lines)}, run_dir / "cell_type_onehot_map.torch")
    with open(run_dir / "var_dims.pkl", "wb") as fh:
        pickle.dump(var_dims, fh)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(state_config, sort_keys=False))

"""Small real arc-state models for fast tests (built, not trained), and runs written from them."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from analysis.config import load_config
from analysis.datasets import demo
from analysis.errors import InputError
from analysis.model.load import load_run
from analysis.model.state import build
from analysis.model.state.run import StateModel

GENES = [f"GENE{i}" for i in range(24)]
KDS = ["KD_A", "KD_B", "KD_C", "KD_D", "KD_E", "KD_F"]

# Model configurations the Jacobian oracles (test_jacobians) and the end-to-end runs (test_shapes) cover.
CONFIGS = {
    "gpt2 residual": {},
    "gpt2 no residual": {"predict_residual": False},
    "gpt2 basal projection": {"use_basal_projection": True},
    "llama": {"backbone": "llama"},
    "gpt2 batch token": {"use_batch_token": True, "basal_mapping_strategy": "batch", "batch_dim": 3, "extra_tokens": 1},
    "gpt2 batch encoder": {"batch_encoder": True, "batch_dim": 3},
    "gpt2 confidence token": {"confidence_token": True, "extra_tokens": 1},
    "gpt2 lora": {"lora": {"enable": True, "r": 4, "alpha": 8}},
}


def jacobian_inputs(model, n_kds=3, n_draws=2, set_size=6, seed=1, dtype=torch.float32):
    """Random Jacobian inputs for the arc-state `model`: pert_repr [n_kds, H] and draw sets [n_draws, set_size,
    input_dim]."""
    g = torch.Generator().manual_seed(seed)
    draw_sets = torch.rand(n_draws, set_size, model.input_dim, generator=g, dtype=dtype) * 3
    pert_repr = torch.randn(n_kds, model.hidden_dim, generator=g, dtype=dtype)
    return pert_repr, draw_sets


def adapted(model, decode: bool = False) -> StateModel:
    """The arc-state `model` as a `PerturbationModel` (STATE's adapter, no run folder), for the Jacobian engine."""
    return StateModel.in_memory(model, decode)


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


def embedding_run(output_space: str = "all", embed_dim: int = 12, n_hvgs: int = 16) -> dict:
    """tiny_model / write_tiny_run keywords for an embedding-space run on `.obsm["X_state"]` as `state tx train`
    builds it: a gene decoder (small hidden layer) unless output_space is "embedding"."""
    return {"embedding": dict(embed_key="X_state", embed_dim=embed_dim, output_space=output_space, n_hvgs=n_hvgs),
            "gene_decoder_bool": True, "decoder_hidden_dims": [20]}


def tiny_model(n_genes: int = 24, n_perts: int = 7, hidden: int = 16, set_size: int = 6, backbone: str = "GPT2",
               seed: int = 0, n_layers: int = 2, embedding: dict | None = None, **overrides):
    """A StateTransitionPerturbationModel with random weights; `overrides` replace model kwargs; `embedding`:
    `build.construct_model`'s embedding-run keywords (`embedding_run`)."""
    torch.manual_seed(seed)
    kwargs = demo.demo_model_kwargs(n_genes, set_size)
    kwargs.update(hidden_dim=hidden, n_decoder_layers=2)
    if backbone == "GPT2":
        kwargs["transformer_backbone_kwargs"] = dict(n_positions=set_size + 2, n_embd=hidden, n_layer=n_layers, n_head=2,
                                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
    else:
        kwargs["transformer_backbone_key"] = "llama"
        kwargs["transformer_backbone_kwargs"] = dict(max_position_embeddings=set_size + 2, hidden_size=hidden,
                                                     intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                                                     num_attention_heads=2, num_key_value_heads=2, head_dim=hidden // 2,
                                                     use_cache=False, bidirectional_attention=True)
    kwargs.update(overrides)
    batch_dim = kwargs.pop("batch_dim", None)
    model = build.construct_model(n_genes, n_perts, kwargs, GENES[:n_genes], batch_dim, control=demo.CONTROL,
                                  **(embedding or {}))
    # Random biases and larger weights so ReLUs and the residual path all carry signal.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def write_tiny_run(folder, n_controls: int = 40, cells_per_kd: int = 5, seed: int = 0, pert_features: dict | None = None,
                   embedding: dict | None = None, lines: dict | None = None, **model_overrides):
    """A run directory + .h5ad in `folder`, with `var_dims.pkl` as cell_load's get_var_dims writes it; returns a
    config for it (small stats settings; the first line).

    pert_features: {perturbation name: vector} for the control and KDS (default one-hot rows); embedding: as in
    `tiny_model` (the cells' embeddings then go to `.obsm[embed_key]`, the config's feature_key); lines: {cell line:
    (Poisson rate of its cells, the KDs screened there)} (default: demo.CELL_LINE at rate 3 with every KD).
    """
    lines = lines or {demo.CELL_LINE: (3.0, KDS)}
    names = [demo.CONTROL] + KDS
    if pert_features is None:
        eye = np.eye(len(names), dtype=np.float32)
        pert_features = {n: eye[i] for i, n in enumerate(names)}
    n_perts = len(next(iter(pert_features.values())))
    model = tiny_model(seed=seed, n_perts=n_perts, embedding=embedding, **model_overrides)
    var_dims = {"input_dim": int(model.input_dim), "gene_dim": len(GENES), "hvg_dim": int(model.hvg_dim),
                "output_dim": int(model.output_dim), "pert_dim": n_perts,
                "gene_names": GENES[:model.hvg_dim] if model.output_space == "gene" else GENES,
                "batch_dim": 1, "pert_names": names}
    build.write_run_directory(folder / "run", model, pert_features, var_dims, {"model": {"name": "state"}},
                              tuple(lines))
    rng = np.random.default_rng(seed)
    cells = lambda n, rate: np.log1p(rng.poisson(rate, size=(n, len(GENES)))).astype(np.float32)
    demo.write_h5ad(GENES, {line: (cells(n_controls, rate), {kd: cells(cells_per_kd, rate) for kd in kds})
                            for line, (rate, kds) in lines.items()}, folder / "data.h5ad")
    first = [next(iter(lines))]
    if embedding is None:
        return tiny_config(folder, cell_lines=first)
    adata = ad.read_h5ad(folder / "data.h5ad")
    adata.obsm[embedding["embed_key"]] = rng.normal(size=(adata.n_obs, embedding["embed_dim"])).astype(np.float32)
    adata.write_h5ad(folder / "data.h5ad")
    return tiny_config(folder, feature_key=embedding["embed_key"], cell_lines=first)


def tiny_config(folder, **overrides):
    base = dict(run_dir=str(folder / "run"), h5ad=str(folder / "data.h5ad"), cache_dir=str(folder / "cache"),
                demo=False, n_draws=2, n_permutations=199, n_bootstrap=50, cluster_bootstrap=5, max_clusters=3,
                prerank_permutations=50, shard_kds=4, kds_per_call=2, device="cpu", compile_jacobian=False,
                cell_lines=[demo.CELL_LINE])
    base.update(overrides)
    return load_config(None, **base)


def expect_error(config, *fragments) -> str:
    """Loading `config` fails with a one-line InputError containing every fragment; returns the message."""
    with pytest.raises(InputError) as err:
        load_run(config)
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message

"""Small real arc-state models for fast tests (built, not trained), and runs written from them."""

from __future__ import annotations


import numpy as np
import torch

from analysis import demo
from analysis.config import load_config

GENES = [f"GENE{i}" for i in range(24)]
KDS = ["KD_A", "KD_B", "KD_C", "KD_D", "KD_E", "KD_F"]


def tiny_model(n_genes: int = 24, n_perts: int = 7, hidden: int = 16, set_size: int = 6, backbone: str = "GPT2",
               seed: int = 0, **overrides):
    """A StateTransitionPerturbationModel with random weights; `overrides` replace model kwargs."""
    torch.manual_seed(seed)
    kwargs = demo.demo_model_kwargs(n_genes, set_size)
    kwargs.update(hidden_dim=hidden, n_decoder_layers=2)
    if backbone == "GPT2":
        kwargs["transformer_backbone_kwargs"] = dict(n_positions=set_size + 2, n_embd=hidden, n_layer=2, n_head=2,
                                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
    else:
        kwargs["transformer_backbone_key"] = "llama"
        kwargs["transformer_backbone_kwargs"] = dict(max_position_embeddings=set_size + 2, hidden_size=hidden,
                                                     intermediate_size=2 * hidden, num_hidden_layers=2,
                                                     num_attention_heads=2, num_key_value_heads=2, head_dim=hidden // 2,
                                                     use_cache=False, bidirectional_attention=True)
    kwargs.update(overrides)
    batch_dim = kwargs.pop("batch_dim", None)
    model = demo.construct_model(n_genes, n_perts, kwargs, GENES[:n_genes], batch_dim)
    # Random biases and larger weights so ReLUs and the residual path all carry signal.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def write_tiny_run(folder, n_controls: int = 40, cells_per_kd: int = 5, seed: int = 0, **model_overrides):
    """A run directory + .h5ad in `folder`; returns a config for it (small stats settings)."""
    model = tiny_model(seed=seed, **model_overrides)
    names = [demo.CONTROL] + KDS
    eye = np.eye(len(names), dtype=np.float32)
    onehots = {n: eye[i] for i, n in enumerate(names)}
    var_dims = {"input_dim": len(GENES), "gene_dim": len(GENES), "hvg_dim": len(GENES), "output_dim": len(GENES),
                "pert_dim": len(names), "gene_names": GENES, "batch_dim": 1, "pert_names": names}
    demo.write_run_directory(folder / "run", model, onehots, var_dims, {"model": {"name": "state"}})
    rng = np.random.default_rng(seed)
    cells = lambda n: np.log1p(rng.poisson(3.0, size=(n, len(GENES)))).astype(np.float32)
    demo.write_h5ad(GENES, {demo.CELL_LINE: (cells(n_controls), {kd: cells(cells_per_kd) for kd in KDS})}, folder / "data.h5ad")
    return tiny_config(folder)


def tiny_config(folder, **overrides):
    base = dict(run_dir=str(folder / "run"), h5ad=str(folder / "data.h5ad"), cache_dir=str(folder / "cache"),
                demo=False, n_draws=2, n_permutations=199, n_bootstrap=50, cluster_bootstrap=5, max_clusters=3,
                prerank_permutations=50, shard_kds=4, kds_per_call=2, device="cpu", compile_jacobian=False,
                cell_lines=[demo.CELL_LINE])
    base.update(overrides)
    return load_config(None, **base)

"""Every run shape `state tx train` writes, through the real forward and the loader, on runs written with arc-state's
own class: embedding-space runs with a gene decoder, perturbation features that are not one-hot, every backbone and
token configuration end to end, any checkpoint by name, gene-set libraries by name, and the quirks real run
directories carry."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny import (
    CONFIGS,
    GENES,
    KDS,
    adapted,
    embedding_run,
    expect_error,
    jacobian_inputs,
    relative_error,
    tiny_config,
    tiny_model,
    write_tiny_run,
)

import analysis
from analysis.config import DEFAULT_CONFIG, PACKAGE_DIR, SPACES, bundled_gene_sets, load_config
from analysis.console import silenced
from analysis.errors import InputError
from analysis.model import jacobians
from analysis.model.effects import effect_tasks, kd_means
from analysis.model.load import load_run
from analysis.model.protocol import OutputSpace
from analysis.pipeline.run import load_line
from analysis.stats import enrichment
from analysis.store.gmt import read_libraries

# Perturbation features as a protein language model gives them: dense vectors, zeros for the control (cell_load
# fills perturbations missing from the features file with zeros).
FEATURE_WIDTH = 10
GENE_EMBEDDINGS = {"non-targeting": np.zeros(FEATURE_WIDTH, dtype=np.float32),
                   **{kd: np.random.default_rng(i).normal(size=FEATURE_WIDTH).astype(np.float32)
                      for i, kd in enumerate(KDS)}}
DECODED = "X_state decoded to all genes"
EMBEDDED = "X_state undecoded, gene-embedding perturbations"
SHAPES = {**CONFIGS, DECODED: embedding_run("all"),
          EMBEDDED: {**embedding_run("embedding"), "pert_features": GENE_EMBEDDINGS}}
HALLMARK = "MSigDB_Hallmark_v7.0"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """shape name -> (config, Results): each shape written and analysed once per module, with the bundled Hallmark
    sets; one transformer block and all KDs in one call keep it to seconds (tracing the JVP dominates)."""
    done = {}

    def get(name):
        if name not in done:
            folder = tmp_path_factory.mktemp("shape")
            config = write_tiny_run(folder, n_layers=1, **SHAPES[name]).replace(
                gene_sets=(bundled_gene_sets()[HALLMARK],), kds_per_call=len(KDS), shard_kds=len(KDS))
            done[name] = (config, analysis.run(config, progress=False))
        return done[name]

    return get


# ---------------------------------------------------------------- 3. every configuration end to end
# What each shape's run is, from how it was written above: output width G, and the space the loader must report.
GENE_SPACE = "gene space (the model's output, 24 genes)"
EXPECTED_OUTPUT = {**{name: (len(GENES), GENE_SPACE) for name in CONFIGS},
                   DECODED: (len(GENES), "gene space decoded by the model's gene decoder (24 genes)"),
                   EMBEDDED: (12, "embedding space X_state (12 dims, undecoded)")}
HIDDEN = 16  # tiny_model's pert_repr width


def stored_jacobians(folder) -> dict:
    """{KD index: J_k [G, H]} read straight from the shard files of a Jacobian stage folder."""
    out = {}
    for path in sorted(Path(folder).glob("shard_*.npz")):
        with np.load(path) as shard:
            out.update(zip(shard["kd_index"].tolist(), shard["jacobian"]))
    return out


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_run_shape_goes_through_the_whole_analysis(analysed, name):
    """ΔY [K, G] and each stored J_k [G, H] with this model's G and H; C_jac the cosines of the stored Jacobians;
    the deciding r the Pearson r of the two matrices' upper triangles; provenance the model's real dims and space."""
    _, results = analysed(name)
    n_genes, space = EXPECTED_OUTPUT[name]
    effects, part3 = results.effects.responses, results.routing
    assert effects.delta_y.shape == (len(KDS), n_genes) and np.isfinite(effects.delta_y).all()
    assert effects.pert_repr.shape == (len(KDS), HIDDEN)
    assert np.abs(effects.delta_y).max() > 1e-4  # the KDs move the output
    assert part3.autograd_check["kd"] == KDS[0] and part3.autograd_check["relative_error"] < 1e-4

    stored = stored_jacobians(results.stage_paths["jacobians"])
    assert sorted(stored) == list(range(len(KDS)))
    jac = np.stack([stored[k] for k in range(len(KDS))]).astype(float)
    assert jac.shape == (len(KDS), n_genes, HIDDEN) and np.abs(jac).max() > 1e-4
    flat = jac.reshape(len(KDS), -1)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    assert np.allclose(part3.c_jac, unit @ unit.T, atol=1e-5)
    strong = np.flatnonzero(results.effects.labels > 0)  # the KDs the Mantel statistics read
    upper = tuple(strong[side] for side in np.triu_indices(len(strong), k=1))
    c_out = results.effects.c_out
    raw = np.corrcoef(c_out[upper], part3.c_jac[upper])[0, 1]
    assert part3.evidence.raw_mantel.statistic == pytest.approx(raw, abs=1e-6)  # reported beside the deciding r
    specific = np.corrcoef(c_out[upper], part3.c_jac_specific[upper])[0, 1]
    assert part3.verdict.deciding[0].value == pytest.approx(specific, abs=1e-6)  # the deciding r: KD-specific

    prov = results.provenance
    assert (prov["n_kds"], prov["n_genes"], prov["hidden_dim"], prov["set_size"], prov["space"]) == \
        (len(KDS), n_genes, HIDDEN, 6, space)


# ---------------------------------------------------------------- 1. embedding-space runs and their gene decoder
@pytest.mark.parametrize("output_space, n_genes", [("gene", 16), ("all", 24)])
def test_an_embedding_run_is_read_in_decoded_gene_space_unless_asked(tmp_path, output_space, n_genes):
    config = write_tiny_run(tmp_path, **embedding_run(output_space))
    auto, genes, embedding = (load_line(config.replace(space=space)) for space in SPACES)
    keys = (auto.keys["inputs"], genes.keys["inputs"], embedding.keys["inputs"])
    auto, genes, embedding = auto.run, genes.run, embedding.run
    assert auto.space == OutputSpace("genes", True, f"gene space decoded by the model's gene decoder ({n_genes} genes)")
    assert auto.gene_names == tuple(GENES[:n_genes])  # var_dims gene_names: the HVGs for "gene", all genes for "all"
    assert genes.space == auto.space and keys[1] == keys[0]  # "auto" and what it resolves to share results
    assert embedding.space == OutputSpace("embedding", False, "embedding space X_state (12 dims, undecoded)")
    assert embedding.gene_names == tuple(f"X_state:{i}" for i in range(12))
    assert keys[2] != keys[0]


@pytest.mark.parametrize("decoder", [False, True])
def test_a_gene_space_run_is_read_in_its_own_output(tmp_path, decoder):
    """`state tx train` gives gene-space runs a decoder too (gene_decoder_bool defaults on); predict leaves it unused."""
    config = write_tiny_run(tmp_path, gene_decoder_bool=decoder, decoder_hidden_dims=[20])
    auto, genes = load_run(config), load_run(config.replace(space="genes"))
    assert (auto.model.gene_decoder is not None) == decoder
    assert auto.space == genes.space == OutputSpace("genes", False, "gene space (the model's output, 24 genes)")


def test_decoded_delta_y_is_the_set_mean_of_decoded_cells(analysed):
    """ΔY = E[decoder(forward(...))] − the same for the control: each cell decoded, then the set mean."""
    config, results = analysed(DECODED)
    run, effects = load_run(config), results.effects.responses
    assert effects.gene_names == tuple(GENES) and results.provenance["space"] == run.space.description
    r, k = 1, 2
    cells = torch.as_tensor(run.controls[effects.draw_cells[r]])

    def decoded(name, per_cell):
        features = torch.as_tensor(run.pert_features[name]).expand(len(cells), -1)
        with torch.no_grad():
            out = run.model({"pert_emb": features, "ctrl_cell_emb": cells}, padded=False)
            return (run.model.gene_decoder(out).mean(0) if per_cell
                    else run.model.gene_decoder(out.mean(0, keepdim=True))[0]).numpy()

    direct = decoded(KDS[k], True) - decoded(run.control_label, True)
    assert np.allclose(effects.delta_y_draws[r, k], direct, atol=1e-5)
    decoded_means = decoded(KDS[k], False) - decoded(run.control_label, False)
    assert not np.allclose(effects.delta_y_draws[r, k], decoded_means, atol=1e-5)  # the order matters


def test_jacobian_through_the_gene_decoder_matches_autograd_and_finite_differences():
    model = tiny_model(n_layers=1, **embedding_run("gene"))
    pert_repr, draw_sets = jacobian_inputs(model)
    decoded = adapted(model, decode=True)
    forward = jacobians.forward_mode_jacobian(decoded, pert_repr, draw_sets)
    assert forward.shape == (3, 16, model.hidden_dim) and forward.abs().max() > 1e-3
    reverse = jacobians.reverse_mode_jacobian(decoded, pert_repr[1], draw_sets)
    assert relative_error(forward[1], reverse) <= 1e-4
    # Same shapes, undecoded: the traced-graph cache tells the two apart.
    assert jacobians.forward_mode_jacobian(adapted(model), pert_repr, draw_sets).shape == (3, 12, model.hidden_dim)

    decoded64 = adapted(model.double(), decode=True)
    p64, d64 = pert_repr.double(), draw_sets.double()
    exact = jacobians.forward_mode_jacobian(decoded64, p64, d64)
    fd = jacobians.central_difference_jacobian(decoded64, p64[2], d64, step=1e-5)
    assert relative_error(exact[2], fd) <= 1e-6


def test_a_shipped_run_carries_its_space(analysed):
    """A Ray worker rebuilds the run from checkpoint bytes: it must decode as the driver does."""
    config, results = analysed(DECODED)
    run = load_run(config)
    shipped = pickle.loads(pickle.dumps(run.ship())).build()
    assert shipped.space == run.space
    task, draw_cells = effect_tasks(run, len(KDS))[0], results.effects.responses.draw_cells
    local = kd_means(run, task, draw_cells)
    assert local.shape == (len(draw_cells), len(KDS), len(GENES))
    assert np.array_equal(kd_means(shipped, task, draw_cells), local)


def test_embedding_space_responses_have_no_gene_set_tables(analysed):
    _, results = analysed(EMBEDDED)
    assert results.effects.responses.gene_names[0] == "X_state:0"
    assert results.provenance["space"] == "embedding space X_state (12 dims, undecoded)"
    assert results.effects.gsea.empty
    assert not (results.routing.svd_enrichment["kind"] == "genes").any()


def test_enrichment_skips_responses_that_are_not_genes_and_keeps_kd_targets():
    """With real gene symbols on both sides, only the flag keeps response GSEA from running; KD-target ORA and the
    KD-score side of an axis run either way."""
    libraries = read_libraries([bundled_gene_sets()[HALLMARK]])
    terms = libraries[HALLMARK]
    genes = sorted({g for term in list(terms)[:6] for g in terms[term]})
    myc = list(terms["HALLMARK_MYC_TARGETS_V1"])[:6]
    kds = myc + [g for g in terms["HALLMARK_HYPOXIA"] if g not in myc][:6]
    labels = np.repeat([1, 2], 6)
    rng = np.random.default_rng(0)
    responses = rng.normal(size=(len(kds), len(genes)))
    for are_genes in (False, True):
        ora, gsea = enrichment.cluster_enrichment(kds, labels, responses, genes, libraries, 20, 0, are_genes)
        axes = enrichment.axis_enrichment("routing", rng.normal(size=(len(kds), 1)), responses[:1], kds, genes,
                                          libraries, 20, 0, 1, are_genes)
        assert not ora.empty and (axes["kind"] == "KDs").any()
        assert gsea.empty != are_genes and (axes["kind"] == "genes").any() == are_genes


def test_genes_space_without_a_decoder_is_a_one_line_error(tmp_path):
    config = write_tiny_run(tmp_path, **embedding_run("embedding"))
    expect_error(config.replace(space="genes"), "config field space", "gene decoder", "X_state")


def test_embedding_space_of_a_gene_space_run_is_a_one_line_error(tmp_path):
    expect_error(write_tiny_run(tmp_path).replace(space="embedding"), "config field space", "not an embedding")


def test_unknown_space_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match=r"^override space: expected 'auto' or 'genes' or 'embedding', got 'latent'$"):
        tiny_config(tmp_path, space="latent")


def test_decoded_gene_names_must_match_the_decoder(tmp_path):
    config = write_tiny_run(tmp_path, **embedding_run("gene"))
    path = config.run_dir / "var_dims.pkl"
    var_dims = pickle.loads(path.read_bytes())
    var_dims["gene_names"] = var_dims["gene_names"][:10]
    path.write_bytes(pickle.dumps(var_dims))
    expect_error(config, "var_dims.pkl gene_names", "10 output genes", "gene decoder's gene_dim 16")


# ---------------------------------------------------------------- 2. perturbation features that are not one-hot
def test_perturbation_features_are_what_the_map_holds(analysed):
    config, results = analysed(EMBEDDED)
    run = load_run(config)
    features = np.stack([GENE_EMBEDDINGS[kd] for kd in KDS])
    assert run.model.pert_dim == FEATURE_WIDTH and np.array_equal(run.features(KDS).numpy(), features)
    with torch.no_grad():
        expected = run.model.pert_encoder(torch.as_tensor(features)).double().numpy()
    assert np.allclose(results.effects.responses.pert_repr, expected, atol=1e-6)


# ---------------------------------------------------------------- 4. checkpoints by name
def test_any_checkpoint_file_loads_by_name(tmp_path):
    """Step checkpoints as Lightning's ModelCheckpoint writes them during `state tx train`, and last.ckpt."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    config = write_tiny_run(tmp_path)
    folder = config.run_dir / "checkpoints"
    model = tiny_model().train()
    sets, size = 2, 6
    batch = {"pert_emb": torch.eye(7)[torch.arange(1, sets + 1).repeat_interleave(size)],
             "ctrl_cell_emb": torch.rand(sets * size, len(GENES)), "pert_cell_emb": torch.rand(sets * size, len(GENES))}
    with silenced():
        trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[
                                 ModelCheckpoint(folder, "{step}", every_n_train_steps=1, save_top_k=-1, save_last=True),
                                 ModelCheckpoint(folder, every_n_train_steps=2, save_top_k=-1)])
        trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader([batch] * 2, batch_size=None))
    names = {"step=1.ckpt", "step=2.ckpt", "last.ckpt", "epoch=0-step=2.ckpt"}
    assert names <= {p.name for p in folder.iterdir()}
    key = "pert_encoder.0.weight"
    final = torch.load(folder / "final.ckpt", weights_only=False)["state_dict"][key]
    for name in names:
        stored = torch.load(folder / name, weights_only=False)["state_dict"][key]
        assert not torch.equal(stored, final)  # trained: a different file than final.ckpt
        named = config.replace(checkpoint=name)
        assert torch.equal(load_run(named).model.state_dict()[key], stored)
        assert load_run(named).ship().checkpoint == (folder / name).read_bytes()


def test_absent_checkpoint_lists_every_file_there(tmp_path):
    config = write_tiny_run(tmp_path)
    folder = config.run_dir / "checkpoints"
    shutil.copy(folder / "final.ckpt", folder / "epoch=1-step=400.ckpt")
    (folder / "hparams.yaml").write_text("lr: 0.001\n")
    expect_error(config.replace(checkpoint="best.ckpt"), "best.ckpt", "epoch=1-step=400.ckpt", "final.ckpt",
                 "hparams.yaml")


# ---------------------------------------------------------------- 5. gene-set libraries by name
def write_config(folder: Path, gene_sets) -> Path:
    path = folder / "run.toml"
    entries = ", ".join(f'"{entry}"' for entry in gene_sets)
    path.write_text(f'[model]\nrun_dir = "run"\n[data]\nh5ad = "data.h5ad"\n[runtime]\ncache_dir = "cache"\n'
                    f"[enrichment]\ngene_sets = [{entries}]\n")
    return path


def test_gene_sets_by_bundled_name_or_by_path(tmp_path):
    own = tmp_path / "sets" / "mine.gmt"
    own.parent.mkdir()
    own.write_text("MY_TERM\tmine\tGENE1\tGENE2\n")
    elsewhere = tmp_path / "elsewhere.gmt"
    elsewhere.write_text("OTHER\tother\tGENE3\n")
    folder = tmp_path / "config"
    folder.mkdir()
    config = load_config(write_config(folder, ["GO_Biological_Process_2021", HALLMARK, f"{HALLMARK}.gmt",
                                               "../sets/mine.gmt", str(elsewhere)]))
    bundled = bundled_gene_sets()
    assert set(bundled) == {"GO_Biological_Process_2021", HALLMARK}
    assert config.gene_sets == (bundled["GO_Biological_Process_2021"], bundled[HALLMARK], bundled[HALLMARK],
                                own.resolve(), elsewhere.resolve())
    for demo_config in (DEFAULT_CONFIG, PACKAGE_DIR.parent / "configs" / "demo.toml"):
        assert load_config(demo_config).gene_sets == tuple(bundled.values())


@pytest.mark.parametrize("entry", ["Hallmark", "sets/absent.gmt"])
def test_unknown_gene_set_is_a_one_line_error_listing_the_bundled_names(tmp_path, entry):
    with pytest.raises(InputError) as err:
        load_config(write_config(tmp_path, [entry]))
    message = str(err.value)
    assert "\n" not in message and "[enrichment].gene_sets" in message and f"'{entry}'" in message
    assert "GO_Biological_Process_2021, MSigDB_Hallmark_v7.0" in message


# ---------------------------------------------------------------- 6. quirks of real run directories
def test_numpy_string_keys_in_the_perturbation_map(tmp_path):
    config = write_tiny_run(tmp_path)
    path = config.run_dir / "pert_onehot_map.pt"
    torch.save({np.str_(name): vector for name, vector in torch.load(path).items()}, path)
    assert all(type(name) is np.str_ for name in torch.load(path, weights_only=False))
    run = load_run(config)
    assert run.kd_names == tuple(KDS) and all(type(name) is str for name in run.pert_features)


def test_numpy_integers_and_gene_name_arrays_in_var_dims(tmp_path):
    config = write_tiny_run(tmp_path, **embedding_run("gene"))
    path = config.run_dir / "var_dims.pkl"
    var_dims = pickle.loads(path.read_bytes())
    var_dims = {k: (np.asarray(v) if k in ("gene_names", "pert_names") else np.int64(v)) for k, v in var_dims.items()}
    path.write_bytes(pickle.dumps(var_dims))
    run = load_run(config)
    assert run.gene_names == tuple(GENES[:16]) and all(type(g) is str for g in run.gene_names)


def test_absolute_paths_of_another_machine_in_the_run(tmp_path):
    """config.yaml and the checkpoint's hyper-parameters name files on the training cluster."""
    gone = "/gpfs/home/someone/state_runs"
    config = write_tiny_run(tmp_path, init_from=f"{gone}/pretrained/last.ckpt")
    (config.run_dir / "config.yaml").write_text(yaml.safe_dump({
        "name": "replogle_hepg2", "output_dir": gone,
        "data": {"kwargs": {"toml_config_path": f"{gone}/replogle.toml", "embed_key": None, "output_space": "gene"}},
        "model": {"name": "state", "kwargs": {"init_from": f"{gone}/pretrained/last.ckpt"}}}))
    run = load_run(config)
    assert run.model.hparams["init_from"].startswith(gone)
    assert run.kd_names == tuple(KDS)


def test_positions_include_the_extra_tokens(tmp_path):
    """arc-state sizes the backbone to cell_set_len + extra_tokens; a confidence token takes one of them."""
    config = write_tiny_run(tmp_path, confidence_token=True, extra_tokens=2)
    hparams = torch.load(config.run_dir / "checkpoints" / "final.ckpt", weights_only=False)["hyper_parameters"]
    assert hparams["transformer_backbone_kwargs"]["n_positions"] == 6 + 2
    assert load_run(config).set_size == 6
    widest = load_run(config.replace(set_size=7))  # 7 cells + the confidence token fill the 8 positions
    basal = torch.as_tensor(widest.controls[:7])[None]
    with torch.no_grad():
        assert torch.isfinite(widest.set_means(widest.features(KDS[:1]), basal)).all()
    expect_error(config.replace(set_size=8), "set_size", "7 positions")

"""Every input a wrong file can break gives a one-line error naming the file or field."""

import json
import pickle
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from tiny import KDS, expect_error, tiny_config, write_tiny_run

import analysis
from analysis.config import MODEL_KINDS, load_config
from analysis.errors import InputError
from analysis.model import load
from analysis.model.load import load_run
from analysis.model.state import build


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    write_tiny_run(folder)
    return folder


@pytest.fixture
def folder(tiny_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    return copy


def test_loads_a_good_run(folder):
    run = load_run(tiny_config(folder))
    assert run.kd_names == tuple(KDS) and run.controls.shape == (40, 24) and run.set_size == 6
    assert not run.model.training


def test_trainer_checkpoint_of_the_demo_loads(demo_run, demo_config):
    """The demo's checkpoint is written by Lightning's Trainer.save_checkpoint, as `state tx train` writes it."""
    ckpt = torch.load(demo_config.run_dir / "checkpoints" / "final.ckpt", weights_only=False, map_location="cpu")
    assert {"state_dict", "hyper_parameters", "pytorch-lightning_version", "optimizer_states"} <= ckpt.keys()
    assert type(demo_run.model).__name__ == "StateTransitionPerturbationModel"
    assert len(demo_run.kd_names) >= 150 and len(demo_run.gene_names) >= 500


def test_missing_run_directory(folder):
    expect_error(tiny_config(folder, run_dir=str(folder / "nope")), "run directory not found")


@pytest.mark.parametrize("name", ["config.yaml", "var_dims.pkl", "pert_onehot_map.pt"])
def test_missing_run_file(folder, name):
    (folder / "run" / name).unlink()
    expect_error(tiny_config(folder), name, "missing")


def test_missing_checkpoint_lists_those_present(folder):
    expect_error(tiny_config(folder, checkpoint="best.ckpt"), "best.ckpt", "final.ckpt")


def test_corrupt_checkpoint(folder):
    (folder / "run" / "checkpoints" / "final.ckpt").write_bytes(b"not a checkpoint")
    expect_error(tiny_config(folder), "final.ckpt", "could not be loaded")


def test_control_label_not_in_map(folder):
    expect_error(tiny_config(folder, control_label="DMSO"), "pert_onehot_map.pt", "DMSO")


def test_control_label_not_in_data(folder):
    onehots = torch.load(folder / "run" / "pert_onehot_map.pt")
    onehots["NT2"] = onehots.pop("non-targeting")
    torch.save(onehots, folder / "run" / "pert_onehot_map.pt")
    expect_error(tiny_config(folder, control_label="NT2"), "obs['gene']", "no 'NT2' control cells")


def test_feature_width_mismatch(folder):
    adata = ad.read_h5ad(folder / "data.h5ad")
    ad.AnnData(X=adata.X[:, :20], obs=adata.obs).write_h5ad(folder / "data.h5ad")
    expect_error(tiny_config(folder), "width 20", "input_dim 24")


def test_output_gene_count_mismatch(folder):
    path = folder / "run" / "var_dims.pkl"
    var_dims = pickle.loads(path.read_bytes())
    var_dims["gene_names"] = var_dims["gene_names"][:10]
    path.write_bytes(pickle.dumps(var_dims))
    expect_error(tiny_config(folder), "gene_names", "10 output genes", "output_dim 24")


def test_unknown_kd(folder):
    expect_error(tiny_config(folder, kds=["KD_A", "NOT_A_KD"]), "field kds", "NOT_A_KD")


def test_no_controls_for_cell_line(folder):
    expect_error(tiny_config(folder, cell_lines="K562"), "no cells of cell line 'K562'")


def test_nan_in_features(folder):
    adata = ad.read_h5ad(folder / "data.h5ad")
    adata.X[3, 5] = np.nan
    adata.write_h5ad(folder / "data.h5ad")
    expect_error(tiny_config(folder), "NaN or inf")


def test_missing_obsm_key(folder):
    expect_error(tiny_config(folder, feature_key="X_hvg"), "obsm['X_hvg']")


def test_missing_h5ad(folder):
    expect_error(tiny_config(folder, h5ad=str(folder / "absent.h5ad")), "absent.h5ad", "not found")


def test_set_size_larger_than_model_positions(folder):
    expect_error(tiny_config(folder, set_size=50), "set_size", "positions")


def test_cuda_requested_without_cuda(folder):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    expect_error(tiny_config(folder, device="cuda"), "device", "CUDA is not available")


def test_every_line_is_checked_before_any_stage_runs(tmp_path):
    """A cell line absent from the data stops the run before the first line's stages compute anything."""
    config = write_tiny_run(tmp_path)
    with pytest.raises(InputError, match="no cells of cell line 'Jurkat'"):
        analysis.run(config.replace(cell_lines=(config.cell_lines[0], "Jurkat")), progress=False)
    assert not list(config.cache_dir.rglob("*.npz")) and not list(config.cache_dir.rglob("_done.json"))


# ---------------------------------------------------------------- when the demo is (re)built
def test_demo_version_follows_the_module_text_and_the_seed(tmp_path, monkeypatch):
    from analysis.datasets import demo

    version = demo.demo_version(0)
    assert demo.demo_version(0) == version and demo.demo_version(1) != version
    source = Path(demo.__file__).read_text()
    copy = tmp_path / "demo.py"
    copy.write_text(source)
    monkeypatch.setattr(demo, "__file__", str(copy))  # the version is read from the module's own file
    assert demo.demo_version(0) == version
    copy.write_text(source + "\n# an edit to the demo's definition\n")
    assert demo.demo_version(0) != version


def test_the_demo_is_built_when_missing_stale_or_incomplete_and_not_when_current(folder):
    from analysis.datasets import demo

    config = tiny_config(folder, demo=True, demo_seed=3)
    marker = folder / "run" / "demo_build.json"
    assert not marker.exists() and demo.needs_build(config)  # no marker: not built by the demo
    marker.write_text(json.dumps({"demo_version": demo.demo_version(0)}))  # built with another seed: stale
    assert demo.needs_build(config)
    marker.write_text(json.dumps({"demo_version": "0123456789abcdef"}))  # another definition: stale
    assert demo.needs_build(config)
    marker.write_text("{not json")  # unreadable: rebuilt
    assert demo.needs_build(config)
    marker.write_text(json.dumps({"demo_version": demo.demo_version(3)}))
    assert not demo.needs_build(config)  # current
    assert not demo.needs_build(config.replace(demo=False)) and not demo.needs_build(tiny_config(folder))
    (folder / "run" / "checkpoints" / "final.ckpt").unlink()
    assert demo.needs_build(config)  # current marker, checkpoint missing


def test_a_run_of_another_arc_state_model_names_it_in_one_line(folder):
    """A run folder of arc-state's EmbedSum baseline (pert_encoder + basal_encoder summed, MLP decoder), written as
    `state tx train` writes it: one line naming the model found and the kinds supported, from the loader and from
    the pipeline's entry point."""
    from state.tx.models.embed_sum import EmbedSumPerturbationModel

    model = EmbedSumPerturbationModel(input_dim=24, hidden_dim=16, output_dim=24, pert_dim=7, gene_dim=24,
                                      hvg_dim=24, gene_decoder_bool=False, control_pert="non-targeting")
    onehots = torch.load(folder / "run" / "pert_onehot_map.pt")
    var_dims = pickle.loads((folder / "run" / "var_dims.pkl").read_bytes())
    shutil.rmtree(folder / "run")
    build.write_run_directory(folder / "run", model, onehots, var_dims, {"model": {"name": "embedsum"}},
                              ("HepG2",))
    fragments = ("config.yaml", "'embedsum'", "EmbedSumPerturbationModel", "kinds supported: state")
    expect_error(tiny_config(folder), *fragments)
    expect_error(tiny_config(folder, model_kind="state"), *fragments)
    with pytest.raises(InputError) as err:
        analysis.run(tiny_config(folder), progress=False)
    assert all(f in str(err.value) for f in fragments) and "\n" not in str(err.value)


def test_the_model_kind_is_read_from_the_run_folder_or_named(folder):
    assert load_run(tiny_config(folder)).kind == load_run(tiny_config(folder, model_kind="state")).kind == "state"
    config = folder / "run.toml"
    config.write_text(f'[model]\nrun_dir = "run"\nkind = "embedsum"\n[data]\nh5ad = "data.h5ad"\n'
                      f'[runtime]\ncache_dir = "cache"\n')
    with pytest.raises(InputError) as err:
        load_config(config)
    assert str(err.value) == f"{config} [model].kind: expected a model kind: 'auto' or 'state', got 'embedsum'"


def test_every_model_kind_has_an_adapter():
    assert set(load.ADAPTERS) == set(MODEL_KINDS) - {"auto"}

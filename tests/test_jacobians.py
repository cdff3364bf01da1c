"""The forward-mode engine against two independent oracles on arc-state models of several configurations."""

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import CONFIGS, adapted, relative_error, tiny_model, write_tiny_run
from tiny import jacobian_inputs as inputs

from analysis.model import jacobians


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_mode_matches_autograd_and_finite_differences(name):
    model = tiny_model(**CONFIGS[name])
    for p in model.parameters():
        p.requires_grad_(False)
    pert_repr, draw_sets = inputs(model)
    run = adapted(model)
    forward = jacobians.forward_mode_jacobian(run, pert_repr, draw_sets)
    assert forward.shape == (3, model.output_dim, model.hidden_dim)
    assert forward.abs().max() > 1e-3  # the output really depends on pert_repr
    # KDs of one call must not leak into each other: check the middle one against the one-KD oracles.
    reverse = jacobians.reverse_mode_jacobian(run, pert_repr[1], draw_sets)
    assert relative_error(forward[1], reverse) <= 1e-4, name

    # Second oracle in float64. Llama's RMSNorm computes in float32 even in a float64 model, so its
    # finite differences carry float32 rounding (~1e-7 / step); GPT2 is float64 throughout.
    step, tolerance = (1e-3, 2e-3) if name == "llama" else (1e-5, 1e-6)
    run64 = adapted(model.double())
    p64, d64 = pert_repr.double(), draw_sets.double()
    exact = jacobians.forward_mode_jacobian(run64, p64, d64)
    fd = jacobians.central_difference_jacobian(run64, p64[2], d64, step=step)
    assert relative_error(exact[2], fd) <= tolerance, name


@pytest.mark.parametrize("name", ["gpt2 residual", "llama", "gpt2 batch token", "gpt2 confidence token"])
def test_block_jacobians_match_reverse_mode(name):
    """Per-block J (the set-mean hidden state of each backbone block w.r.t. pert_repr) from the same forward-mode
    JVPs as J, against reverse mode through the same hooks, KD by KD; J itself is unchanged by carrying them.
    Batch and confidence tokens check that only the cell positions are averaged: the oracle's states are read from
    the backbone's own `output_hidden_states` (GPT2 and Llama list each block's output before the final norm)."""
    model = tiny_model(**CONFIGS[name], n_layers=3)
    for p in model.parameters():
        p.requires_grad_(False)
    pert_repr, draw_sets = inputs(model)
    run = adapted(model)
    alone = jacobians.forward_mode_jacobian(run, pert_repr, draw_sets)
    jacobian, by_block = jacobians.forward_mode_jacobian(run, pert_repr, draw_sets, blocks=True, tangents_per_call=5)
    assert by_block.shape == (3, 3, model.hidden_dim, model.hidden_dim)
    assert torch.allclose(jacobian, alone, rtol=1e-5, atol=1e-7)
    for kd in range(3):
        with torch.enable_grad():
            reverse = torch.autograd.functional.jacobian(
                lambda p: run.expected_states(p[None], draw_sets)[1][:, 0], pert_repr[kd])
        assert by_block[kd].abs().max() > 1e-3, name
        assert relative_error(by_block[kd], reverse) <= 1e-4, name

    seen = []
    handle = model.transformer_backbone.register_forward_hook(lambda m, a, kw, out: seen.append(out), with_kwargs=True)
    original = model.transformer_backbone.forward
    model.transformer_backbone.forward = lambda **kw: original(**kw, output_hidden_states=True)
    try:
        with torch.no_grad():
            states = run.expected_states(pert_repr[:1], draw_sets[:1])[1][:, 0]  # [L, D]
    finally:
        model.transformer_backbone.forward = original
        handle.remove()
    first = 1 if CONFIGS[name].get("use_batch_token") else 0
    cells = seen[0].hidden_states[2][0, first:first + draw_sets.shape[1]].mean(dim=0)  # output of block 2 of 3
    assert torch.allclose(states[1], cells, rtol=1e-5, atol=1e-6), name


def test_model_is_left_clean_after_differentiation():
    """No functorch wrapper left on the module: a deep copy made afterwards (as a Ray worker's or a retrace's) gives
    the original's outputs and, by reverse mode on the copy, the Jacobian forward mode gave on the original."""
    model = tiny_model()
    pert_repr, draw_sets = inputs(model)
    run = adapted(model)
    with torch.no_grad():
        before = run.expected_output(pert_repr, draw_sets)
    forward = jacobians.forward_mode_jacobian(run, pert_repr, draw_sets)
    twin = adapted(copy.deepcopy(model))
    with torch.no_grad():
        assert torch.equal(twin.expected_output(pert_repr, draw_sets), before)
        assert torch.equal(run.expected_output(pert_repr, draw_sets), before)
    assert relative_error(forward[0], jacobians.reverse_mode_jacobian(twin, pert_repr[0], draw_sets)) <= 1e-4


def test_tangent_chunking_gives_the_same_jacobian():
    model = tiny_model()
    pert_repr, draw_sets = inputs(model)
    whole = jacobians.forward_mode_jacobian(adapted(model), pert_repr, draw_sets, tangents_per_call=16)
    chunked = jacobians.forward_mode_jacobian(adapted(model), pert_repr, draw_sets, tangents_per_call=5)  # 16 = 5+5+5+1
    assert torch.allclose(whole, chunked, rtol=1e-5, atol=1e-7)


def test_kept_primal_values_do_not_grow_with_the_chunk():
    """The primal part is kept once per call; activations functorch expands to the chunk are recomputed, not kept."""
    model = tiny_model()
    pert_repr, draw_sets = inputs(model)

    def kept_bytes(chunk):
        graph = jacobians.linearized_jacobian(adapted(model), pert_repr, draw_sets, chunk, compile=False)
        return sum(t.untyped_storage().nbytes() for t in graph.keep(pert_repr, draw_sets))

    assert kept_bytes(2) == kept_bytes(8)


def test_traced_graph_follows_in_place_weight_changes():
    model = tiny_model()
    pert_repr, draw_sets = inputs(model)
    run = adapted(model)
    before = jacobians.forward_mode_jacobian(run, pert_repr, draw_sets)
    with torch.no_grad():
        model.project_out[0].weight.mul_(2.0)
    after = jacobians.forward_mode_jacobian(run, pert_repr, draw_sets)
    reverse = jacobians.reverse_mode_jacobian(run, pert_repr[0], draw_sets)
    assert relative_error(after[0], reverse) <= 1e-4
    assert relative_error(before[0], reverse) > 1e-2


def test_compiled_engine_matches_autograd():
    """Inductor's kernels for the tangent graph agree with reverse mode (one configuration: compiling is slow)."""
    model = tiny_model()
    pert_repr, draw_sets = inputs(model)
    compiled = jacobians.forward_mode_jacobian(adapted(model), pert_repr, draw_sets, compile=True)
    reverse = jacobians.reverse_mode_jacobian(adapted(model), pert_repr[1], draw_sets)
    assert relative_error(compiled[1], reverse) <= 1e-4


def test_compile_failure_falls_back_to_the_eager_graph(monkeypatch):
    def broken_compile(graph, **_):
        def run(*_args):
            raise RuntimeError("no C++ compiler")
        return run

    model = tiny_model()  # first: importing Lightning (with the model) wraps torch.compile
    pert_repr, draw_sets = inputs(model)
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        fallback = jacobians.forward_mode_jacobian(adapted(model), pert_repr, draw_sets, compile=True)
    assert torch.equal(fallback, jacobians.forward_mode_jacobian(adapted(model), pert_repr, draw_sets))


def stored_jacobian(folder, kd: int) -> np.ndarray:
    """J_k as stored in a Jacobian stage folder, read straight from the shard files."""
    for path in sorted(Path(folder).glob("shard_*.npz")):
        with np.load(path) as shard:
            where = np.flatnonzero(shard["kd_index"] == kd)
            if where.size:
                return shard["jacobian"][where[0]].astype(float)
    raise LookupError(kd)


def test_a_stored_demo_jacobian_equals_central_differences_of_the_expected_output(demo_run, demo_results):
    """One stored J_k of the demo (not the KD the run's own autograd check used) against central differences of
    E[Y](p) in float64, taken here over every pert_repr direction; and the run's recorded check is small."""
    check = demo_results.routing.autograd_check
    assert check["kd"] == demo_results.effects.responses.kd_names[0] and check["relative_error"] <= 1e-4
    responses = demo_results.effects.responses
    (folder,) = [path for label, path in demo_results.stage_paths.items() if label.startswith("jacobians")][:1]
    k = len(responses.kd_names) // 2
    model = dataclasses.replace(demo_run, model=copy.deepcopy(demo_run.model).double(), dtype=torch.float64)
    draw_sets = torch.as_tensor(demo_run.controls[responses.draw_cells], dtype=torch.float64)
    p = torch.as_tensor(responses.pert_repr[k], dtype=torch.float64)
    step = 1e-4
    basis = torch.eye(len(p), dtype=torch.float64) * step
    with torch.no_grad():
        plus = model.expected_output(p[None] + basis, draw_sets)
        minus = model.expected_output(p[None] - basis, draw_sets)
    oracle = ((plus - minus) / (2 * step)).T.numpy()  # [G, H]
    stored = stored_jacobian(folder, k)
    assert stored.shape == oracle.shape == (len(responses.gene_names), responses.pert_repr.shape[1])
    error = np.abs(stored - oracle).max() / np.abs(oracle).max()
    assert error <= 1e-3, error
    other = stored_jacobian(folder, int(np.argmin(demo_results.routing.c_jac[k])))  # the test tells KDs apart
    assert np.abs(other - oracle).max() / np.abs(oracle).max() > 1e-2


def test_changed_inputs_get_a_different_shard_folder(tmp_path):
    from analysis.pipeline.run import load_line

    config = write_tiny_run(tmp_path)
    line = load_line(config)
    key = line.keys["jacobians"]
    assert load_line(config.replace(n_draws=3), line.run.model).keys["jacobians"] != key
    assert load_line(config.replace(seed=5), line.run.model).keys["jacobians"] != key
    assert load_line(config.replace(kds_per_call=3), line.run.model).keys["jacobians"] != key
    assert load_line(config.replace(cluster_bootstrap=7), line.run.model).keys["jacobians"] != key  # via effects
    assert load_line(config.replace(n_permutations=199), line.run.model).keys["jacobians"] == key  # routing only
    other = write_tiny_run(tmp_path / "other", seed=1)  # different weights and data
    assert load_line(other).keys["jacobians"] != key

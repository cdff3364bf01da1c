"""The genome-scale screen (`analysis.datasets.screen`): its planted truth holds at every size, and sizes nest."""

import collections
import dataclasses

import numpy as np
import pytest

from analysis.config import AnalysisConfig
from analysis.datasets import screen


def test_modules_are_disjoint_go_terms_of_realistic_sizes_covering_over_half_the_kds():
    names, modules = screen._modules()
    assert len(names) == len(set(names)) == screen.N_KDS
    sizes = collections.Counter(m for m in modules if m)
    assert screen.CLUSTERED_SHARE <= sum(sizes.values()) / screen.N_KDS < screen.CLUSTERED_SHARE + 0.1
    assert len(sizes) <= screen.N_MODULES and min(sizes.values()) >= screen.MODULE_MIN
    assert max(sizes.values()) <= screen.MODULE_MAX
    import gseapy

    library = gseapy.read_gmt(str(screen.GENESETS_DIR / "GO_Biological_Process_2021.gmt"))
    for term in sizes:  # a module's KDs are genes of its GO term (what the KD-target enrichment should name)
        assert {n for n, m in zip(names, modules) if m == term} <= set(library[term])


def test_smaller_screens_are_the_first_kds_of_the_large_one():
    small, large = screen.planted_screen(1000), screen.planted_screen(3000)
    assert large.kd_names[:1000] == small.kd_names and large.kd_module[:1000] == small.kd_module
    assert np.array_equal(large.pert_repr[:1000], small.pert_repr)
    assert np.array_equal(large.w1, small.w1) and np.array_equal(large.w2, small.w2)


def test_planted_responses_separate_modules_from_the_weak_tail():
    """Module KDs open their module's unit (gating checked when built) and respond ~10× more than weak KDs, whose
    ΔY comes from the open units alone; J of two KDs of one module are identical, of different modules not."""
    planted = screen.planted_screen(1000)
    norms = np.linalg.norm(planted.delta_y(), axis=1)
    weak = np.array([m == "weak" for m in planted.kd_module])
    assert 0.3 < weak.mean() < 0.5
    assert np.median(norms[~weak]) > 10 * np.median(norms[weak])
    # the weak-effect rule (‖ΔY‖ below weak_fraction × the median) keeps the module KDs, as over half are in modules
    weak_fraction = dataclasses.fields(AnalysisConfig)[[f.name for f in dataclasses.fields(AnalysisConfig)]
                                                       .index("weak_fraction")].default
    assert np.quantile(norms[~weak], 0.05) > weak_fraction * np.median(norms)
    assert np.quantile(norms[weak], 0.95) < weak_fraction * np.median(norms)
    jac = planted.jacobians()
    module = np.array(planted.kd_module)
    first = np.flatnonzero(module == module[~weak][0])[:2]
    other = np.flatnonzero((module != module[first[0]]) & ~weak)[0]
    assert np.allclose(jac[first[0]], jac[first[1]])
    assert not np.allclose(jac[first[0]], jac[other])


def test_sizes_outside_the_world_are_refused():
    with pytest.raises(ValueError, match="n_kds"):
        screen.planted_screen(20_000)

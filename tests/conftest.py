"""Shared fixtures. The demo (model + results) is built once per session into the project's cache/,
the same place the README's command uses, so a later run reuses it."""

from __future__ import annotations

from pathlib import Path

import pytest

import analysis
from analysis.config import load_config

# The repository's demo config (the one the report reads): its paths resolve against its own folder, so the demo is
# built into <repo>/cache wherever pytest runs from (the packaged twin would use the working directory).
REPO_DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


@pytest.fixture(scope="session")
def demo_config():
    config = load_config(REPO_DEMO_CONFIG)
    from analysis.datasets import demo

    demo.ensure_demo(config)
    return config


@pytest.fixture(scope="session")
def demo_results(demo_config):
    return analysis.run(demo_config, progress=False)


@pytest.fixture(scope="session")
def demo_run(demo_config):
    from analysis.model.load import load_run

    return load_run(demo_config.per_line()[0])


# Fixtures that build the demo (a trained model) or the known-answer / null models: the tests using them are slow.
SLOW_FIXTURES = {"demo_config", "known", "independent"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

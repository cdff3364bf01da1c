"""Versions, hardware and hashes of a run, for the report's reproducibility appendix."""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata

from ..config import PACKAGE_DIR, AnalysisConfig
from ..model.protocol import PerturbationModel
from ..store import cache

PACKAGES = ("torch", "arc-state", "transformers", "numpy", "scipy", "pandas", "scikit-learn", "gseapy", "altair", "anndata",
            "cell-eval", "polars")


def code_version() -> str:
    """Hash of every module of the package (what the report says it was made with)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def provenance(config: AnalysisConfig, run: PerturbationModel, input_key: str) -> dict:
    """Versions, hardware and hashes of one line's analysis; input_key: the key of its inputs (model, data, loading
    code)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "python": platform.python_version(), "platform": platform.platform(), "device": run.device_description,
        "cpu_count": os.cpu_count(), "versions": versions, "code_version": code_version(),
        "checkpoint_sha256": cache.file_digest(run.checkpoint), "data_sha256": cache.file_digest(config.h5ad),
        "input_key": input_key, "config": config.describe(), "config_file": str(config.source),
        "n_kds": len(run.kd_names), "n_genes": len(run.gene_names), "hidden_dim": run.hidden_size,
        "set_size": run.set_size, "space": run.space.description,
    }

"""The inputs: the loaded run (model, control cells, KDs). Not stored: it is loaded on every run, and its key, which
every other stage's key contains, hashes the fields below, the input files' bytes and the resolved output space.

Loading reads the whole config: the fields it reads beyond FIELDS are keyed through the facts (kds → kd_names,
set_size, space, model_kind → the resolved kind) or decide where the model runs, not what it computes (device)."""

from __future__ import annotations

from ...config import AnalysisConfig
from ...model.load import load_run
from ...model.protocol import PerturbationModel

NEEDS = ()
FIELDS = ("feature_key", "perturbation_column", "cell_type_column", "control_label", "cell_lines", "dtype",
          "checkpoint")
FACTS = ("input_digests", "space", "model_kind")
LOCATED = ("run_dir", "h5ad")  # fields naming the files whose bytes `input_digests` hashes
STORED = False


def compute(config: AnalysisConfig, model=None) -> PerturbationModel:
    """The run of `config` (every input check; `model`: the checkpoint's model when already loaded)."""
    return load_run(config, model)

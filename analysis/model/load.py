"""Loading a run: the model kind that reads it (`[model] kind`, by default the one the run folder names) and that
kind's adapter, which returns a `PerturbationModel` (`model.protocol`).

Today's one kind is "state" (`model/state/`); every kind is an arc-state run folder, whose config.yaml names the
arc-state model it holds. A run of a model no adapter reads is a one-line InputError naming it.
"""

from __future__ import annotations

from pathlib import Path

from ..config import AnalysisConfig
from ..errors import InputError
from .protocol import PerturbationModel
from .state import run as state

ADAPTERS = {state.KIND: state}  # kind -> its adapter: load_model, load_run, run_files, MODEL_NAMES

# arc-state's model names (config.yaml `model.name`, as its get_lightning_module reads them, lower case) and the class
# each builds, for the error naming a model no adapter reads.
ARC_STATE_CLASSES = {
    "state": "StateTransitionPerturbationModel", "pertsets": "StateTransitionPerturbationModel",
    "neuralot": "StateTransitionPerturbationModel", "embedsum": "EmbedSumPerturbationModel",
    "old_neuralot": "OldNeuralOTPerturbationModel", "globalsimplesum": "PerturbMeanPerturbationModel",
    "perturb_mean": "PerturbMeanPerturbationModel", "celltypemean": "ContextMeanPerturbationModel",
    "context_mean": "ContextMeanPerturbationModel", "decoder_only": "DecoderOnlyPerturbationModel",
    "pseudobulk": "PseudobulkPerturbationModel", "cpa": "CPAPerturbationModel", "scvi": "SCVIPerturbationModel",
    "scgpt": "scGPTForPerturbationModel",
}


def run_model_name(run_dir: Path) -> str | None:
    """The arc-state model name the run folder's config.yaml gives (`model.name`, lower case); None when the file is
    missing or names none (the loader then reports what is missing)."""
    import yaml

    try:
        name = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {})["model"]["name"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    return str(name).lower() if name is not None else None


def describe_model_name(name: str) -> str:
    """e.g. "'embedsum' (arc-state's EmbedSumPerturbationModel)"."""
    found = ARC_STATE_CLASSES.get(name) or next((c for n, c in ARC_STATE_CLASSES.items() if name.startswith(n)), None)
    return f"'{name}'" + (f" (arc-state's {found})" if found else "")


def adapter(config: AnalysisConfig):
    """The adapter of the config's run: `[model] kind`, or ("auto") the kind whose adapter reads the model the run
    folder's config.yaml names (STATE when it names none). InputError when that adapter does not read it."""
    name = run_model_name(config.run_dir)
    if config.model_kind != "auto":
        kind = config.model_kind
    else:
        # a config.yaml naming no model (written by hand, or unreadable: the adapter then says what is wrong) is STATE's
        kind = next((k for k, a in ADAPTERS.items() if name is None or name in a.MODEL_NAMES), None)
    if kind is None or (name is not None and name not in ADAPTERS[kind].MODEL_NAMES):
        kinds = "; ".join(f"{k} ({', '.join(a.MODEL_NAMES)})" for k, a in ADAPTERS.items())
        raise InputError(f"{config.run_dir / 'config.yaml'} model.name",
                         f"the run holds model {describe_model_name(name)}, which no model kind reads "
                         f"(kinds supported: {kinds})")
    return ADAPTERS[kind]


def load_model(config: AnalysisConfig):
    """The run's weights, loaded once for every cell line of the config (`load_run`'s `model`)."""
    return adapter(config).load_model(config)


def load_run(config: AnalysisConfig, model=None) -> PerturbationModel:
    """The run of the config's cell line as a `PerturbationModel`, every input a wrong file can break checked;
    `model`: the weights when already loaded (`load_model`)."""
    return adapter(config).load_run(config, model)


def input_files(config: AnalysisConfig) -> tuple[Path, ...]:
    """The files a run's results depend on: the run folder's (checkpoint first) and the cell data."""
    return (*adapter(config).run_files(config), config.h5ad)


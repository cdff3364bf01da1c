"""Does a STATE State-Transition model use its perturbation-encoder geometry?

The house (`tests/test_layout.py` holds it to these rules):
- `config` (the one configuration) and `results` (the one results container) at the base, with `errors` and
  `console`;
- `model/` — the only torch: the `PerturbationModel` protocol, loading a run through its kind's adapter (STATE's in
  `model/state/`, the only code that names STATE's internals or imports arc-state), ΔY, Jacobians;
- `stats/` — clustering, enrichment, routing statistics, SVD axes, consistency across lines, the verdict: numbers
  and what they support, no words; `model/` and `stats/` never import each other;
- `store/` — the cache, Jacobian shards, the record codec (writes and reads every record from its type annotations),
  GMT files (imports the base only);
- `pipeline/` — the stages, one module each (`pipeline/stage/`), the graph and keys assembled from them (`stages`),
  the run, executors, provenance: the only package that knows stage order;
- `present/` — every word, table and chart (reads `results` only);
- `datasets/` — the demo world and trainer, the known-answer models, the calibration worlds.

`run(config)` builds the demo when the config asks for it and runs the pipeline; `python -m analysis` is the CLI.
"""

from .config import AnalysisConfig, load_config
from .errors import CacheError, InputError
from .results import Results

__version__ = "0.1.0"
__all__ = ["AnalysisConfig", "CacheError", "InputError", "Results", "load_config", "run", "__version__"]


def run(config: AnalysisConfig, progress: bool = True, executor=None) -> Results:
    """Every stage of the analysis for `config`, computing only what the cache lacks (`pipeline.run.run`); the
    embedded demo is built first when the config asks for it and it is missing. Other packages' warnings stay out of
    the console and the report (`console.third_party_warnings_off`)."""
    from .console import third_party_warnings_off

    with third_party_warnings_off():
        from .datasets import demo
        from .pipeline.run import run as run_pipeline
        from .store import cache

        if demo.needs_build(config):
            cache.require_writable(config.cache_dir)
        demo.ensure_demo(config, progress)
        return run_pipeline(config, progress, executor)

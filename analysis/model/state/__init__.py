"""STATE's adapter (`[model] kind = "state"`): arc-state's StateTransitionPerturbationModel as a `PerturbationModel`.

The only code of the package that names STATE's internals or imports arc-state (`tests/test_layout.py` holds it):
- `forward` — calling the model's own forward on sets of cells, pert_repr substituted through a hook;
- `run` — the run folder `state tx train` writes, loaded as a `StateModel` (the protocol), and shipped to workers;
- `build` — STATE models constructed and written as `state tx train` writes them (the datasets' and tests' models).
"""

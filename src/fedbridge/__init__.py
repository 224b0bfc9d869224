"""fedbridge: federated learning across clients whose data differ in quality.

The Python API (docs/api.md): load_experiment, run, open_run, Study, Experiment.
"""

from importlib import import_module

__version__ = "0.1.0"

__all__ = ["Experiment", "Study", "__version__", "load_experiment", "open_run", "run"]

# imported on first use (PEP 562): the Flower ClientApp imports fedbridge.local and the like, and
# must not pay for the study, pandas and matplotlib that the API brings in
_LAZY = {
    "load_experiment": "fedbridge.api", "run": "fedbridge.api", "open_run": "fedbridge.api", "Study": "fedbridge.api",
    "Experiment": "fedbridge.experiment",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedbridge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

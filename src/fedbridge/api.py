"""The Python API: load an experiment, run it, and read a finished run as tables and models.

    exp = fedbridge.load_experiment("configs/seed.toml", {"train.rounds": 3})
    study = fedbridge.run(exp)
    study.table(), study.metrics(), study.model(client=2, method="fedavg")

Every problem a caller can fix raises FedbridgeError (ConfigError for the experiment) with the
message the `fedbridge` command would print. The whole API is in docs/api.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w
import torch
from rich.console import Console

from fedbridge import experiment as experiments
from fedbridge import results, schema
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.experiment import Experiment
from fedbridge.models import build_model

if TYPE_CHECKING:
    import pandas as pd

# what a dataset's models take and give, for runs made before summary.json recorded it
_MODEL_IO = {"mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10), "digits": ((1, 8, 8), 10)}


def _literal(value: Any) -> str:
    """`value` as a one-line TOML literal, the form `--set KEY=VALUE` reads."""
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_literal(str(k))} = {_literal(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_literal, value)) + "]"
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def _override_texts(overrides: Mapping[str, Any] | Sequence[str]) -> list[str]:
    if isinstance(overrides, str):
        raise ConfigError(f"overrides = {overrides!r}: give a list of \"KEY=VALUE\" strings or a dict {{key: value}}")
    if not isinstance(overrides, Mapping):
        bad = [text for text in overrides if not isinstance(text, str)]
        if bad:
            raise ConfigError(f"overrides: {bad[0]!r} is not a \"KEY=VALUE\" string; give strings, or a dict {{key: value}}")
        return list(overrides)
    texts = []
    for key, value in overrides.items():
        try:
            texts.append(f"{key}={_literal(value)}")
        except TypeError:
            raise ConfigError(
                f"overrides[{key!r}] = {value!r} has no TOML form; give a number, string, bool, list or dict"
            ) from None
    return texts


def load_experiment(path: str | Path, overrides: Mapping[str, Any] | Sequence[str] = ()) -> Experiment:
    """The validated experiment of the TOML file `path`, with `overrides` applied as `--set` would.

    `overrides` is a dict of dotted keys to values (`{"train.rounds": 3, "baselines": ["local"]}`)
    or a list of "KEY=VALUE" strings as on the command line. Raises ConfigError naming the key, the
    value and what is allowed.
    """
    return experiments.load_experiment(Path(path), _override_texts(overrides))[0]


def default_run_dir(exp: Experiment, tag: str = "") -> Path:
    """runs/NAME{tag}-TIME, with -2, -3, ... after it when that is taken (two runs in one second)."""
    base = Path("runs") / f"{exp.name}{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def run(
    experiment: Experiment, out: str | Path | None = None, data_dir: str | Path | None = None, quiet: bool = True
) -> Study:
    """Run the study of `experiment` into the run directory `out` (default runs/NAME-TIME, as
    `fedbridge run`) and return it as a Study. `data_dir` is `--data-dir`; with `quiet` nothing is
    printed, else the progress and notes go to stderr."""
    from fedbridge.study import run_study  # the engines and the data: only when something is run

    if not isinstance(experiment, Experiment):
        raise ConfigError(
            f"run() takes an Experiment, not {type(experiment).__name__}; make one with fedbridge.load_experiment(path)"
        )
    out = Path(out) if out is not None else default_run_dir(experiment)
    console = Console(stderr=True, quiet=quiet)
    run_study(experiment, out, None if data_dir is None else Path(data_dir), console, quiet=quiet)
    return open_run(out)


def open_run(path: str | Path) -> Study:
    """The finished run directory `path` (what `fedbridge run` printed) as a Study."""
    path = Path(path)
    summary = results.read_summary(path)
    if "grid" in summary:
        raise FedbridgeError(
            f"{path} is a sweep, not a run; open one of its runs, e.g. fedbridge.open_run(\"{path / 'runs'}/<cell>/seed0\")"
        )
    return Study(path, results.load_run_experiment(path), summary)


def _check(what: str, value: Any, known: list) -> None:
    if value not in known:
        raise FedbridgeError(f"{what} {value!r} is not in this run; its {what}s: {', '.join(map(str, known))}")


@dataclass(frozen=True)
class Study:
    """A finished run directory: its resolved experiment and summary.json, read as tables and models."""

    path: Path
    experiment: Experiment
    summary: schema.RunSummary

    def table(self) -> pd.DataFrame:
        """The final round over seeds, one row per (client, method, test set), as summary.json's "table"."""
        import pandas as pd  # slow to import, and only the tables need it

        return pd.DataFrame(self.summary["table"], columns=schema.row_columns(self.summary["table"]))

    def metrics(self) -> pd.DataFrame:
        """metrics.jsonl: one row per seed, method, evaluated round, client and test set."""
        import pandas as pd

        records = results.read_metrics(self.path)
        # a run without [privacy] has no epsilon column
        columns = [k for k in schema.Record.__annotations__
                   if k in schema.Record.__required_keys__ or any(k in r for r in records)]
        return pd.DataFrame(records, columns=columns)

    def model(self, client: int, method: str, seed: int = 0) -> torch.nn.Module:
        """The model client `client` (from 1, as in the tables) was scored with at the end of `method`
        for `seed`: a plain torch.nn.Module in eval mode. A method with one global model gives every
        client the same; local, ditto, fedper, fedrep and finetune give each client its own."""
        _check("method", method, self.summary["methods"])
        _check("seed", seed, self.summary["seeds"])
        _check("client", client, sorted({row["client"] for row in self.summary["table"]}))
        params = results.load_weights(self.path, seed, method)
        path = results.weights_path(self.path, seed, method)
        if params is None:
            raise FedbridgeError(f"{path} does not exist: the run directory is incomplete; re-run the study")
        input_shape, num_classes = self._model_io()
        module = build_model(self.experiment.model, input_shape, num_classes)
        row = client - 1 if next(iter(params.values())).shape[0] > 1 else 0
        try:
            module.load_state_dict({name: p[row] for name, p in params.items()})
        except RuntimeError as e:
            raise FedbridgeError(
                f"{path} does not fit the run's model ({self.experiment.model}, input {input_shape}): {e}"
            ) from None
        return module.eval()

    def _model_io(self) -> tuple[tuple[int, ...], int]:
        s = self.summary
        if "input_shape" in s and "num_classes" in s:
            return tuple(s["input_shape"]), s["num_classes"]
        if s["dataset"] not in _MODEL_IO:
            raise FedbridgeError(
                f"{self.path / results.SUMMARY} records no input_shape and num_classes, and its dataset "
                f"{s['dataset']!r} is none of {', '.join(_MODEL_IO)}; re-run the study to record them"
            )
        return _MODEL_IO[s["dataset"]]

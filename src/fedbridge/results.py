"""The run directory: config.toml, metrics.jsonl, summary.json, the final weights and, while a
run is under way, checkpoint.pt.

Files are written whole or not at all (temp file + rename), so a crash never leaves a
half-written summary; an existing run is never overwritten. metrics.jsonl is appended to, so a
crash may cut its last line: readers skip it and `resume` rewrites the file to the checkpoint.
"""

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import tomli_w
import torch

from fedbridge import schema
from fedbridge.errors import FedbridgeError
from fedbridge.experiment import Experiment, load_experiment
from fedbridge.files import atomic_write

CONFIG, METRICS, SUMMARY, WEIGHTS = "config.toml", "metrics.jsonl", "summary.json", "weights"
DIAGNOSTICS = "diagnostics.jsonl"
SWEEP_SPEC = "sweep.json"  # what tells a sweep directory from a run directory
CHECKPOINT = "checkpoint.pt"


def create_run_dir(path: Path) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FedbridgeError(
            f"run directory {path} already exists and {'is not empty' if path.is_dir() else 'is a file'}; "
            "nothing was changed in it. Choose another --out, or remove it first."
        )
    try:
        (path / WEIGHTS).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FedbridgeError(f"cannot create run directory {path}: {e.strerror}; choose another --out") from None
    return path


def write_config(run: Path, config: dict) -> None:
    atomic_write(run / CONFIG, tomli_w.dumps(config))


def append_lines(run: Path, name: str, records: list[dict]) -> None:
    """Append records to the JSON-lines file `name` (METRICS or DIAGNOSTICS) of a run."""
    with open(run / name, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _read_lines(run: Path, name: str, problem_of: Callable[[str], str | None], what: str) -> list[dict]:
    """Every complete line of a JSON-lines file; a last line cut short by a crash is left out."""
    path = Path(run) / name
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: the write was cut, not the file corrupted
                break
            problem = "not JSON"
        else:
            problem = problem_of(line)
        if problem:
            raise FedbridgeError(
                f"{path}, line {number}, is not {what} ({problem}); the file was edited or damaged: "
                "restore it from a copy, or re-run the study into a new --out"
            )
        records.append(record)
    return records


def read_metrics(run: Path) -> list[dict]:
    return _read_lines(run, METRICS, schema.record_problem, "a metrics record")


def read_diagnostics(run: Path) -> list[dict]:
    """The strategy's per-client diagnostics of every round; none for runs made before they were kept."""
    return _read_lines(run, DIAGNOSTICS, schema.diagnostic_problem, "a diagnostics record")


def rewrite_lines(run: Path, name: str, records: list[dict]) -> None:
    atomic_write(run / name, "".join(json.dumps(r) + "\n" for r in records))


def weights_path(run: Path, seed: int, method: str) -> Path:
    return Path(run) / WEIGHTS / f"seed{seed}-{method}.pt"


def weights_saved(run: Path, seed: int, method: str) -> bool:
    """Whether that seed's method finished: its weights are written only once it has."""
    return weights_path(run, seed, method).is_file()


def save_weights(run: Path, seed: int, method: str, params: dict[str, torch.Tensor]) -> None:
    """Save stacked parameters [m, ...] as state dicts that `torch.load` + `load_state_dict` read without
    fedbridge: one model (m = 1) is the file's whole content, m per-client models are under "client1", ..."""
    m = next(iter(params.values())).shape[0]
    # clone: a row saved as a view would carry the storage of every model with it
    models = [{name: p[i].clone() for name, p in params.items()} for i in range(m)]
    content = models[0] if m == 1 else {f"client{i + 1}": model for i, model in enumerate(models)}
    atomic_write(weights_path(run, seed, method), lambda tmp: torch.save(content, tmp))


def _stacked(content: dict) -> dict[str, torch.Tensor]:
    """Any layout of a weights file as stacked parameters [m, ...]."""
    if all(isinstance(model, dict) for model in content.values()):
        models = [content[f"client{i}"] for i in range(1, len(content) + 1)]
        return {name: torch.stack([model[name] for model in models]) for name in models[0]}
    # runs made before the state-dict layout saved the stacked tensors themselves; every layer of
    # fedbridge's models has a bias, a vector in a state dict and [m, n] when stacked
    if any(name.endswith("bias") and p.dim() == 2 for name, p in content.items()):
        return content
    return {name: p.unsqueeze(0) for name, p in content.items()}


def _load(path: Path, what: str, fix: str, read: Callable[[dict], dict] = lambda content: content):
    try:
        return read(torch.load(path, weights_only=True))
    except Exception as e:  # torch raises many kinds for a damaged file; all mean the same to a user
        raise FedbridgeError(f"{path} cannot be read as {what} ({type(e).__name__}); it was damaged or replaced: {fix}") from None


def load_weights(run: Path, seed: int, method: str) -> dict[str, torch.Tensor] | None:
    """The saved parameters stacked [m, ...] (m = 1 for one global model), from any layout a run directory holds."""
    path = weights_path(run, seed, method)
    fix = "delete it, and its method of that seed is trained again on resume (or re-run the study)"
    return _load(path, "saved weights", fix, _stacked) if path.exists() else None


def save_checkpoint(run: Path, checkpoint: dict) -> None:
    """Where an unfinished run stands: tensors, numbers and strings only, so it loads with weights_only."""
    atomic_write(run / CHECKPOINT, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(run: Path) -> dict | None:
    path = Path(run) / CHECKPOINT
    fix = "delete it, and the method it was training starts again from round 0 on resume"
    return _load(path, "a checkpoint", fix) if path.exists() else None


def write_summary(run: Path, summary: dict) -> None:
    atomic_write(run / SUMMARY, json.dumps(summary, indent=1))


def read_summary(run: Path) -> dict:
    path = Path(run) / SUMMARY
    if not path.is_file():
        hint = (f"it is still running, or was interrupted: to continue it, fedbridge run --resume {run}"
                if (Path(run) / CONFIG).exists() else "is it a run directory?")
        raise FedbridgeError(f"{path} does not exist ({hint}); `fedbridge run` writes it when a run finishes")
    try:
        text = path.read_text()
        summary = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        summary = None
    sweep = isinstance(summary, dict) and "grid" in summary
    problem = "not JSON" if summary is None else schema.summary_problem(text, sweep)
    if problem:
        raise FedbridgeError(
            f"{path} is not a fedbridge summary ({problem}); it was edited or damaged: re-run the study into a "
            "new --out"
        )
    return summary


def load_run_experiment(run: Path) -> Experiment:
    """The experiment a run directory was started with (its resolved config.toml)."""
    if not (Path(run) / CONFIG).is_file():
        raise FedbridgeError(
            f"{run} has no {CONFIG}, so it is not a run directory; give the folder `fedbridge run` printed (its --out)"
        )
    return load_experiment(Path(run) / CONFIG)[0]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval for the mean over seeds; None for one seed, where there is no spread to go on."""
    if len(values) < 2:
        return None
    import scipy.stats  # here, not at the top: it takes a second to import and only sweeps need it

    mean, std = mean_std(values)
    half = scipy.stats.t.ppf((1 + level) / 2, len(values) - 1) * std / math.sqrt(len(values))
    return mean - half, mean + half


def paired_gains(final_records: list[dict], strategy: str) -> dict[int, list[float]]:
    """Per client, the strategy's own-test accuracy minus the same seed's local-only one, one per seed:
    pairing by seed removes the partition's and the noise's share of the seed-to-seed spread."""
    own = {(r["seed"], r["client"], r["method"]): r["accuracy"] for r in final_records if r["test_set"] == "own"}
    gains: dict[int, list[float]] = defaultdict(list)
    for (seed, client, method), acc in sorted(own.items()):
        if method == strategy and (seed, client, schema.LOCAL) in own:
            gains[client].append(acc - own[(seed, client, schema.LOCAL)])
    return dict(gains)


def table(final_records: list[dict]) -> list[dict]:
    """Long-format rows over seeds: one per (client, method, test set)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in final_records:
        groups[(r["client"], r["profile"], r["method"], r["test_set"])].append(r["accuracy"])
    rows = []
    for (client, profile, method, test_set), accs in groups.items():
        mean, std = mean_std(accs)
        rows.append({
            "client": client, "profile": profile, "method": method, "test_set": test_set,
            "accuracy_mean": mean, "accuracy_std": std, "n_seeds": len(accs),
        })
    return rows

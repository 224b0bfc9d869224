"""The run directory: config.toml, metrics.jsonl, summary.json, the final weights and, while a
run is under way, checkpoint.pt.

Files are written whole or not at all (temp file + rename), so a crash never leaves a
half-written summary; an existing run is never overwritten. metrics.jsonl is appended to, so a
crash may cut its last line: readers skip it and `resume` rewrites the file to the checkpoint.
"""

import json
import math
import os
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import tomli_w
import torch

from fedbridge import schema
from fedbridge.errors import FedbridgeError

CONFIG, METRICS, SUMMARY, WEIGHTS = "config.toml", "metrics.jsonl", "summary.json", "weights"
CHECKPOINT = "checkpoint.pt"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes | str | Callable[[str], None]) -> None:
    """Write `path` whole or not at all; `data` may be a function that writes to the temp path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(tmp)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; a run directory is meant to be read by others as usual
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def append_metrics(run: Path, records: list[dict]) -> None:
    with open(run / METRICS, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def read_metrics(run: Path) -> list[dict]:
    """Every complete line of metrics.jsonl; a last line cut short by a crash is left out."""
    path = Path(run) / METRICS
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
            problem = schema.record_problem(line)
        if problem:
            raise FedbridgeError(
                f"{path}, line {number}, is not a metrics record ({problem}); the file was edited or damaged: "
                "restore it from a copy, or re-run the study into a new --out"
            )
        records.append(record)
    return records


def rewrite_metrics(run: Path, records: list[dict]) -> None:
    atomic_write(run / METRICS, "".join(json.dumps(r) + "\n" for r in records))


def weights_path(run: Path, seed: int, method: str) -> Path:
    return Path(run) / WEIGHTS / f"seed{seed}-{method}.pt"


def save_weights(run: Path, seed: int, method: str, params: dict[str, torch.Tensor]) -> None:
    atomic_write(weights_path(run, seed, method), lambda tmp: torch.save(params, tmp))


def _load(path: Path, what: str, fix: str):
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged file; all mean the same to a user
        raise FedbridgeError(f"{path} cannot be read as {what} ({type(e).__name__}); it was damaged or replaced: {fix}") from None


def load_weights(run: Path, seed: int, method: str) -> dict[str, torch.Tensor] | None:
    path = weights_path(run, seed, method)
    fix = "delete it, and its method of that seed is trained again on resume (or re-run the study)"
    return _load(path, "saved weights", fix) if path.exists() else None


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
        if method == strategy and (seed, client, "local") in own:
            gains[client].append(acc - own[(seed, client, "local")])
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

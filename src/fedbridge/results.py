"""The run directory: config.toml, metrics.jsonl, summary.json and the final weights.

Files are written whole or not at all (temp file + rename), so a crash never leaves a
half-written summary; an existing run is never overwritten.
"""

import json
import os
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import tomli_w
import torch

from fedbridge.errors import FedbridgeError

CONFIG, METRICS, SUMMARY, WEIGHTS = "config.toml", "metrics.jsonl", "summary.json", "weights"


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
            f"run directory {path} already exists and is not empty; nothing was changed in it. "
            "Choose another --out, or remove it first."
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


def save_weights(run: Path, seed: int, method: str, params: dict[str, torch.Tensor]) -> None:
    atomic_write(run / WEIGHTS / f"seed{seed}-{method}.pt", lambda tmp: torch.save(params, tmp))


def write_summary(run: Path, summary: dict) -> None:
    atomic_write(run / SUMMARY, json.dumps(summary, indent=1))


def read_summary(run: Path) -> dict:
    path = Path(run) / SUMMARY
    if not path.is_file():
        hint = "it is still running or was interrupted" if (Path(run) / METRICS).exists() else "is it a run directory?"
        raise FedbridgeError(f"{path} does not exist ({hint}); `fedbridge run` writes it when a run finishes")
    try:
        summary = json.loads(path.read_text())
        summary["table"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise FedbridgeError(f"{path} is not a fedbridge summary (unreadable JSON or no 'table'); re-run the study") from None
    return summary


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


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

"""The run directory: config.toml, metrics.jsonl, summary.json, the final weights and, while a
run is under way, checkpoint.pt.

Files are written whole or not at all (temp file + rename), so a crash never leaves a
half-written summary; an existing run is never overwritten. metrics.jsonl is appended to, so a
crash may cut its last line: readers skip it and `resume` rewrites the file to the checkpoint.
Every weights file's sha256 is recorded when it is written (weights.sha256), so a file damaged
since is told from the finished method it claims to be.
"""

import hashlib
import json
from contextlib import contextmanager
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import tomli_w
import torch

from fedbridge import lock, schema, weights_file
from fedbridge.client_state import Models
from fedbridge.errors import FedbridgeError
from fedbridge.experiment import Experiment, load_experiment
from fedbridge.files import atomic_write, writing

CONFIG, METRICS, SUMMARY, WEIGHTS = "config.toml", "metrics.jsonl", "summary.json", "weights"
DIAGNOSTICS = "diagnostics.jsonl"
RUN_INFO = "run.json"  # which engine trains the run's strategy: a resume must not change it quietly
SWEEP_SPEC = "sweep.json"  # what tells a sweep directory from a run directory
# an advice directory's verdicts and the command that made them (fedbridge.advise)
ADVICE, ADVICE_COMMAND = "advise.json", "command.json"
CHECKPOINT = "checkpoint.pt"
# one file beside weights/, not in it (weights/ holds nothing but the state dicts, one per seed and
# method), in sha256sum's format so `sha256sum -c weights.sha256` checks the weights without fedbridge
HASHES = "weights.sha256"


def _made_by_create_run_dir(entry: Path) -> bool:
    return entry.name == lock.LOCK or (entry.name == WEIGHTS and entry.is_dir() and not any(entry.iterdir()))


def create_run_dir(path: Path) -> Path:
    """Make a new run directory; an existing run is never overwritten. A folder holding only what this
    makes (the lock file, an empty weights/) was stopped before it wrote anything, and counts as new."""
    if path.exists() and (not path.is_dir() or not all(map(_made_by_create_run_dir, path.iterdir()))):
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


def write_engine(run: Path, engine: str) -> None:
    atomic_write(Path(run) / RUN_INFO, json.dumps({"engine": engine}))


def read_engine(run: Path) -> str:
    """The engine that trains the run's strategy: "simulation" or "flower" (run.json; runs made before
    it was kept ran on the simulation engine, as `fedbridge deploy` runs could not be resumed then)."""
    path = Path(run) / RUN_INFO
    if not path.exists():
        return "simulation"
    try:
        engine = json.loads(path.read_bytes())["engine"]
    except (ValueError, KeyError, TypeError, OSError):
        engine = None
    if engine not in ("simulation", "flower"):
        raise FedbridgeError(f"{path} is damaged (it says which engine trains the strategy, "
                             '{"engine": "simulation"} or {"engine": "flower"}); write the right one back to resume')
    return engine


def append_lines(run: Path, name: str, records: list[dict]) -> None:
    """Append records to the JSON-lines file `name` (METRICS or DIAGNOSTICS) of a run."""
    with writing(run / name), open(run / name, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _read_lines(run: Path, name: str, problem_of: Callable[[str], str | None], what: str) -> list[dict]:
    """Every complete line of a JSON-lines file; a last line cut short by a crash is left out."""
    path = Path(run) / name
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")  # JSON's encoding, whatever the locale's
            record = json.loads(line)
        except ValueError as e:  # UnicodeDecodeError or JSONDecodeError
            if number == len(lines):  # no newline after it: the write was cut, not the file corrupted
                break
            problem = f"not UTF-8 text: byte {e.start + 1}" if isinstance(e, UnicodeDecodeError) else "not JSON"
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
    """Whether that seed's method has a weights file: written only once it finished (weights_problem
    says whether the file is still what it finished with)."""
    return weights_path(run, seed, method).is_file()


def retrain_fix(run: Path) -> str:
    """How a seed's method whose weights are damaged or gone is trained again: by --resume, once
    summary.json no longer says that the run finished."""
    first = f"delete {Path(run) / SUMMARY}, then " if (Path(run) / SUMMARY).exists() else ""
    return f"{first}`fedbridge run --resume {run}` trains that method of that seed again and keeps the rest"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _recorded_hashes(run: Path) -> dict[str, str]:
    """weights/NAME -> the sha256 of that file when save_weights wrote it."""
    path = Path(run) / HASHES
    if not path.exists():
        return {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return {name: digest for digest, name in (line.split("  ", 1) for line in lines if line)}
    except ValueError:  # not UTF-8, or a line that is no "DIGEST  NAME"
        raise FedbridgeError(
            f"{path} is damaged (not sha256sum's lines); delete it, and each weights file is then taken as "
            "finished when it loads, as in runs made before hashes were recorded"
        ) from None


def _hash_matches(run: Path, path: Path) -> bool | None:
    """Whether the weights file `path` has the sha256 recorded when it was written; None if none was."""
    recorded = _recorded_hashes(run).get(f"{WEIGHTS}/{path.name}")
    return None if recorded is None else _sha256(path) == recorded


_DIFFERS = f"differs from the sha256 recorded when it was written ({HASHES}): it was damaged or replaced since"


def weights_problem(run: Path, seed: int, method: str) -> str | None:
    """Why that seed's method's weights file is not what the method finished with, or None if it is."""
    path = weights_path(run, seed, method)
    if not path.is_file():
        return "does not exist"
    matches = _hash_matches(run, path)
    if matches is None:
        # runs made before hashes were recorded (or whose weights.sha256 was deleted): a file that
        # loads is taken as finished, the only check there is for them
        try:
            _stacked(torch.load(path, weights_only=True))
        except Exception as e:  # torch raises many kinds for a damaged file; all mean the same here
            return f"cannot be read as saved weights ({type(e).__name__})"
        return None
    return None if matches else _DIFFERS


def save_weights(run: Path, seed: int, method: str, models: Models) -> None:
    """Save the models (stacked [m, ...], or a client_state store) as state dicts that `torch.load` +
    `load_state_dict` read without fedbridge: one model (m = 1) is the file's whole content, m
    per-client models are under "client1", ..., written a chunk of clients at a time (weights_file),
    so a store's models never are all in memory. Its sha256 is recorded in weights.sha256 after it
    is written: a crash in between leaves a whole file with no hash, which is taken as finished when it loads."""
    path = weights_path(run, seed, method)
    n = next(iter(models.values())).shape[0] if isinstance(models, dict) else models.n
    take = (lambda ids: {name: p[ids] for name, p in models.items()}) if isinstance(models, dict) else models.take
    if n == 1:
        model = {name: p[0] for name, p in take(torch.zeros(1, dtype=torch.long)).items()}  # a copy, not a view
        atomic_write(path, lambda tmp: torch.save(model, tmp))
    else:
        atomic_write(path, lambda tmp: weights_file.write(tmp, n, take))
    hashes = _recorded_hashes(run) | {f"{WEIGHTS}/{path.name}": _sha256(path)}
    atomic_write(Path(run) / HASHES, "".join(f"{digest}  {name}\n" for name, digest in sorted(hashes.items())))


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
    if not path.exists():
        return None
    if _hash_matches(run, path) is False:
        raise FedbridgeError(f"{path} {_DIFFERS}; {retrain_fix(run)}")
    return _load(path, "saved weights", retrain_fix(run), _stacked)


def save_checkpoint(run: Path, checkpoint: dict) -> None:
    """Where an unfinished run stands: tensors, numbers and strings only, so it loads with weights_only."""
    atomic_write(run / CHECKPOINT, lambda tmp: torch.save(checkpoint, tmp))


def checkpoint_fix(run: Path) -> str:
    """What to do with a checkpoint.pt that is damaged or not this run's."""
    return (f"delete it, and `fedbridge run --resume {run}` starts the method it was training again from round 0 "
            "(the methods finished before it are kept; their training time is then not known)")


def load_checkpoint(run: Path) -> object | None:
    """What checkpoint.pt holds, as loaded: resume.restore checks it against the run."""
    path = Path(run) / CHECKPOINT
    return _load(path, "a checkpoint", checkpoint_fix(run)) if path.exists() else None


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
    if not sweep:
        _check_final_round(Path(run), summary)
    return summary


def _check_final_round(run: Path, summary: dict) -> None:
    """That metrics.jsonl still holds the last round each row of the summary's table was made from: a
    method whose lines stop early (cut or edited since) would otherwise draw short curves in a report and
    leave a sweep's table short, silently."""
    if not (run / METRICS).exists():
        return  # a summary.json on its own (copied out of its run): its table is all there is to read
    rounds, seeds = summary["rounds"], summary["seeds"]
    final = {(r["seed"], r["client"], r["method"], r["test_set"]) for r in read_metrics(run) if r["round"] == rounds}
    for row in summary["table"]:
        missing = [s for s in seeds if (s, row["client"], row["method"], row["test_set"]) not in final]
        if len(seeds) - len(missing) < row["n_seeds"]:
            files = " and ".join(str(weights_path(run, s, row["method"])) for s in missing)
            raise FedbridgeError(
                f"{run / METRICS} has no round {rounds} of {row['method']} (seed {', '.join(map(str, missing))}, "
                f"client {row['client']}, {row['test_set']} test set), which {run / SUMMARY} was made from: it was cut "
                f"or edited since the run finished. Restore it from a copy, or delete {files} and {run / SUMMARY}, "
                f"and `fedbridge run --resume {run}` trains that method again"
            )


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


# what a sweep's quantities can be, as fractions: an accuracy, or a gain (the difference of two)
BOUNDS = {"local": (0.0, 1.0), "federated": (0.0, 1.0), "gain": (-1.0, 1.0)}


def clip(interval: tuple[float, float], bounds: tuple[float, float]) -> tuple[float, float]:
    return max(interval[0], bounds[0]), min(interval[1], bounds[1])


def confidence_interval(
    values: list[float], level: float = 0.95, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> tuple[float, float] | None:
    """Student-t interval for the mean over seeds, clipped to `bounds` (what the mean can be: the t
    interval is symmetric and passes them near 0% or 100%; the true mean lies within, so clipping never
    loses it); None for one seed, where there is no spread to go on."""
    if len(values) < 2:
        return None
    import scipy.stats  # here, not at the top: it takes a second to import and only sweeps need it

    mean, std = mean_std(values)
    half = scipy.stats.t.ppf((1 + level) / 2, len(values) - 1) * std / math.sqrt(len(values))
    return clip((mean - half, mean + half), bounds)


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


@contextmanager
def command_dir(out: Path, spec_name: str, spec: dict, kind: str, keys: str, again: str) -> Iterator[None]:
    """Make or reopen a directory that one command owns (a sweep's, an advice's): its `spec_name` file
    records the command's `spec`, and the directory's lock is held for the block, so a second copy of
    the command is refused while this one runs, and another command (differing in `keys`) always is."""
    spec_path = out / spec_name
    # a command stopped before its spec was written leaves only the lock file
    if not spec_path.exists() and out.exists() and (
            not out.is_dir() or any(p.name != lock.LOCK for p in out.iterdir())):
        raise FedbridgeError(f"{out} exists and is not {kind} directory; nothing was changed in it. Choose another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FedbridgeError(f"cannot create {kind} directory {out}: {e.strerror}; choose another --out") from None
    with lock.hold(out, again):
        if not spec_path.exists():
            atomic_write(spec_path, json.dumps(spec, indent=1))
        else:
            try:
                existing = json.loads(spec_path.read_bytes())
            except ValueError:  # not UTF-8 or not JSON
                raise FedbridgeError(f"{spec_path} is not readable JSON; it was damaged, choose another --out") from None
            if existing != spec:
                raise FedbridgeError(f"{out} holds another command's {kind.split()[-1]} (its {spec_name} differs in {keys}); "
                                     "nothing was changed in it. Run that command to continue it, or choose another --out.")
        yield

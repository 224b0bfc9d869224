"""A sweep: one study per combination of grid values and seed, each an ordinary run directory made
by its own `fedbridge run` process, then one summary with mean, std and a 95% CI per cell.

Layout: SWEEP_DIR/sweep.json (what was asked), runs/<cell>/seed<S>/ (one run each), logs/,
summary.json and report.html. A run whose summary.json exists is finished and never touched
again; one with a config.toml but no summary was interrupted and is resumed from its checkpoint.
So starting the same sweep again after Ctrl-C or kill -9 runs only what is missing.
"""

import ctypes
import functools
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from fedbridge import files, ray_tasks, results
from fedbridge.bounds import check_fits
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.data.datasets import load_dataset
from fedbridge.experiment import Experiment, load_experiment
from fedbridge.federation import client_rows, resolve_dataset
from fedbridge.progress import progress_bar, say
from fedbridge.schema import LOCAL
from fedbridge.strict import MAX_SEEDS

RUNS, LOGS = "runs", "logs"


@dataclass(frozen=True)
class Cell:
    values: tuple[tuple[str, str], ...]  # (key, value as typed), in grid order

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values]

    @property
    def name(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(self.overrides))


@dataclass(frozen=True)
class Sweep:
    config: Path
    overrides: tuple[str, ...]
    grid: tuple[tuple[str, tuple[str, ...]], ...]
    seeds: tuple[int, ...]
    exps: tuple[Experiment, ...]  # one per cell: a grid may vary the strategy or the baselines too

    @property
    def cells(self) -> list[Cell]:
        return grid_cells(self.grid)

    def spec(self) -> dict:
        return {
            "config": str(self.config),
            "config_sha256": hashlib.sha256(self.config.read_bytes()).hexdigest(),
            "overrides": list(self.overrides),
            "grid": [[k, list(v)] for k, v in self.grid],
            "seeds": list(self.seeds),
        }


def grid_cells(grid: tuple[tuple[str, tuple[str, ...]], ...]) -> list[Cell]:
    keys = [k for k, _ in grid]
    return [Cell(tuple(zip(keys, combo))) for combo in itertools.product(*(v for _, v in grid))]


def split_values(text: str) -> list[str]:
    """'0,0.2,[1,2]' -> ['0', '0.2', '[1,2]']: commas inside brackets or quotes belong to a value."""
    values, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += ch
    values.append(current.strip())
    return values


def parse_grid(text: str) -> tuple[str, tuple[str, ...]]:
    key, sep, raw = text.partition("=")
    values = split_values(raw) if sep else []
    if not key.strip() or not values or any(not v for v in values):
        raise ConfigError(f"--grid {text!r}: write it as KEY=V1,V2,..., e.g. --grid clients.1.profile.sigma=0,0.2,0.5")
    if len(set(values)) < len(values):
        raise ConfigError(f"--grid {text!r}: a value is listed twice; each cell is run once")
    # each run gets its seed from the sweep, which would silently replace the grid's
    if key.strip() in ("seed", "seeds"):
        raise ConfigError(f"--grid {text!r}: {key.strip()} cannot be a grid key, every cell runs with each of the sweep's "
                          "seeds; give how many with --seeds N, and the first with --set seed=N")
    return key.strip(), tuple(values)


def plan(config: Path, overrides: list[str], grid: list[str], n_seeds: int) -> Sweep:
    """The sweep, with every cell's config validated before anything runs."""
    if not grid:
        raise ConfigError("give at least one --grid KEY=V1,V2,...; to run one config, use `fedbridge run`")
    if any(o.partition("=")[0].strip() == "seeds" for o in overrides):
        raise ConfigError("--set seeds=N: a sweep runs each cell once per seed, as many as --seeds N says; use --seeds")
    if n_seeds > MAX_SEEDS:  # the bound of a run's `seeds` (README, "Experiments"), each seed here a run of its own
        raise ConfigError(f"--seeds {n_seeds}: at most {MAX_SEEDS:,} seeds a cell")
    parsed = tuple(parse_grid(g) for g in grid)
    keys = [k for k, _ in parsed]
    if len(set(keys)) < len(keys):
        raise ConfigError(f"--grid: the key {next(k for k in keys if keys.count(k) > 1)} is given twice; list all its values in one --grid")
    cells = grid_cells(parsed)
    exps = [load_experiment(config, [*overrides, *cell.overrides])[0] for cell in cells]
    names = [c.name for c in cells]
    if len(set(names)) < len(names):
        raise ConfigError("--grid: two cells get the same folder name; use values that differ in letters or digits")
    seeds = tuple(exps[0].seed + i for i in range(n_seeds))
    return Sweep(Path(config), tuple(overrides), parsed, seeds, tuple(exps))


def check_cells(sweep: Sweep, data_dir: Path | None) -> None:
    """Every cell's fit to the data and the machine (bounds.check_fits) and its partition for every
    seed, before any run starts: a cell the data cannot give (partition sizes beyond the dataset,
    say) would otherwise fail only after the cells before it had run."""
    load = functools.cache(load_dataset)  # cells mostly share one dataset: read it once
    for cell, exp in zip(sweep.cells, sweep.exps):
        dataset, exp, _ = resolve_dataset(exp, data_dir, load)
        try:
            check_fits(exp, dataset)
            for seed in sweep.seeds:
                client_rows(dataset.train_labels, exp, seed, dataset)
        except ConfigError as e:
            raise ConfigError(f"grid cell {', '.join(cell.overrides)}: {e}") from None


def default_dir(sweep: Sweep) -> Path:
    """The same command gives the same folder, so running it again continues the sweep."""
    digest = hashlib.sha256(json.dumps(sweep.spec(), sort_keys=True).encode()).hexdigest()[:8]
    return Path("sweeps") / f"{sweep.exps[0].name}-{digest}"


def open_sweep_dir(out: Path, sweep: Sweep):
    """Make or reopen the sweep directory and hold its lock for the block: a second copy of the sweep
    is refused while this one runs (its runs and its summary would mix with this one's)."""
    return results.command_dir(out, results.SWEEP_SPEC, sweep.spec(), "a sweep", "config, --set, --grid or --seeds",
                               "run the same sweep command again to continue it")


def run_dir(out: Path, cell: Cell, seed: int) -> Path:
    return out / RUNS / cell.name / f"seed{seed}"


def _die_with_parent() -> None:
    """In the child: when the sweep is killed (even with kill -9), its runs stop too, so a restarted
    sweep never races a leftover process for the same run directory. Linux only; elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def command(sweep: Sweep, out: Path, cell: Cell, seed: int, data_dir: Path | None) -> list[str]:
    target = run_dir(out, cell, seed)
    base = [sys.executable, "-m", "fedbridge.cli", "run", "--quiet"]
    base += ["--data-dir", str(data_dir)] if data_dir else []
    if (target / results.CONFIG).exists():
        return [*base, "--resume", str(target)]
    # one killed before its config was written holds only the lock and an empty weights/, and
    # `fedbridge run --out` takes such a folder as new
    sets = [*sweep.overrides, *cell.overrides, f"seed={seed}", "seeds=1"]
    return [*base, str(sweep.config), *(a for s in sets for a in ("--set", s)), "--out", str(target)]


# a run that exits as stopped by Ctrl-C, SIGTERM or SIGHUP (fedbridge.errors.Stopped) or is killed by one
_STOPPED = {code for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) for code in (128 + s, -s)}


class _Runs:
    """The sweep's running `fedbridge run` processes. Ctrl-C reaches them by itself (the terminal
    signals the whole process group), a SIGTERM or SIGHUP sent to the sweep alone does not: stop()
    passes it on, and keeps queued runs from starting."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopped = False

    def call(self, args: list[str], **popen) -> int:
        with self._lock:
            if self._stopped:  # a queued run a worker took just as the sweep stopped
                return -signal.SIGTERM
            child = subprocess.Popen(args, **popen)
            self._running.add(child)
        try:
            return child.wait()
        finally:
            with self._lock:
                self._running.discard(child)

    def stop(self) -> None:
        """Each running run stops as on Ctrl-C, keeping its finished rounds; no queued one starts."""
        with self._lock:
            self._stopped = True
            for child in self._running:
                child.terminate()


def run_all(
    sweep: Sweep, out: Path, jobs: int, data_dir: Path | None, console: Console, quiet: bool = False,
    ray: bool = False,
) -> None:
    """Run every (cell, seed) that has no summary yet, `jobs` processes at a time; with `ray`, as
    tasks on the Ray cluster this process joined (ray_tasks.connect, whose CPU count is `jobs`)."""
    todo = [(c, s) for c in sweep.cells for s in sweep.seeds if not (run_dir(out, c, s) / results.SUMMARY).exists()]
    total = len(sweep.cells) * len(sweep.seeds)
    with files.writing(out / LOGS):
        (out / LOGS).mkdir(exist_ok=True)
    on_ray = ray_tasks.Runs() if ray else None
    # the cores are shared out between the runs instead of every run grabbing all of them
    threads = {"OMP_NUM_THREADS": "1" if on_ray else str(max(1, (os.cpu_count() or 1) // jobs))}
    env = {**os.environ, **threads}
    failed: list[str] = []
    runs = on_ray or _Runs()

    def one(cell: Cell, seed: int) -> tuple[int, float]:
        log = out / LOGS / f"{cell.name}-seed{seed}.log"
        start = time.perf_counter()
        with files.writing(log):
            f = open(log, "a")
        with f:
            args = command(sweep, out, cell, seed, data_dir)
            code = on_ray.call(args, log, threads, _die_with_parent) if on_ray else \
                runs.call(args, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        return code, time.perf_counter() - start

    with progress_bar(console, "runs", quiet) as progress:
        task = progress.add_task(sweep.exps[0].name, total=total, completed=total - len(todo), status="")
        if len(todo) < total:
            rest = f"running the other {len(todo)}" if todo else "nothing to run"
            say(progress, quiet, f"{total - len(todo)} of {total} runs finished already; {rest}")
        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            futures = {pool.submit(one, c, s): (c, s) for c, s in todo}
            for future in as_completed(futures):
                cell, seed = futures[future]
                code, seconds = future.result()
                label = f"{', '.join(cell.overrides)} · seed {seed}"
                if code in _STOPPED:
                    raise KeyboardInterrupt
                if code != 0:
                    log = out / LOGS / f"{cell.name}-seed{seed}.log"
                    failed.append(f"  {label}: exit {code}; see {log}: {_last_line(log)}")
                    status = f"[red]failed[/red] {label} (exit {code})"
                    say(progress, quiet, status)
                else:
                    own = _own_accuracy(run_dir(out, cell, seed))
                    status = f"{own[-1]} ({label})"
                    say(progress, quiet, f"done {label} in {seconds:.0f} s · own test %: {', '.join(own)}")
                progress.update(task, advance=1, status=status)
        except BaseException:  # Ctrl-C, a signal, or an error here: the runs under way stop too
            runs.stop()
            raise
        finally:
            pool.shutdown(cancel_futures=True)  # the queued runs must not start
            if on_ray:
                on_ray.close()
    if failed:
        raise FedbridgeError(
            f"{len(failed)} of {total} runs failed; the others are kept, and running the same sweep again "
            "retries only the failed and missing ones:\n" + "\n".join(failed)
        )


def _own_accuracy(run: Path) -> list[str]:
    """['local 86.2 / 94.7', 'fedavg 84.3 / 97.2']: each method's final own-test accuracy per client,
    the strategy last."""
    summary = results.read_summary(run)
    own = sorted((r for r in summary["table"] if r["test_set"] == "own"), key=lambda r: r["client"])
    methods = [m for m in summary["methods"] if m != summary["strategy"]] + [summary["strategy"]]
    return [f"{m} " + " / ".join(f"{100 * r['accuracy_mean']:.1f}" for r in own if r["method"] == m) for m in methods]


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def summarize_sweep(out: Path, sweep: Sweep) -> dict:
    """Per cell and client: local-only and federated own-test accuracy and their paired gain,
    each with mean, sample std and a Student-t 95% CI over seeds, clipped to what the quantity can be."""
    rows, dataset, source = [], None, None
    for cell, exp in zip(sweep.cells, sweep.exps):
        final: list[dict] = []
        for seed in sweep.seeds:
            summary = results.read_summary(run_dir(out, cell, seed))
            dataset, source = summary["dataset"], summary["data_source"]
            final += [r for r in results.read_metrics(run_dir(out, cell, seed)) if r["round"] == summary["rounds"]]
        own = [r for r in final if r["test_set"] == "own"]
        profiles = {r["client"]: r["profile"] for r in own}

        def accuracies(method: str) -> dict[int, list[float]]:
            return {c: [r["accuracy"] for r in own if r["client"] == c and r["method"] == method] for c in profiles}

        quantities = {"federated": accuracies(exp.strategy.name)}
        if LOCAL in [m.name for m in exp.methods]:
            quantities |= {"local": accuracies(LOCAL), "gain": results.paired_gains(final, exp.strategy.name)}
        for quantity, by_client in quantities.items():
            for client, values in sorted(by_client.items()):
                mean, std = results.mean_std(values)
                ci = results.confidence_interval(values, bounds=results.BOUNDS[quantity])
                rows.append({
                    "cell": dict(cell.values), "client": client, "profile": profiles[client],
                    "strategy": exp.strategy.name, "quantity": quantity, "mean": mean, "std": std,
                    "ci_low": ci and ci[0], "ci_high": ci and ci[1], "n_seeds": len(values),
                })
    summary = {
        "name": sweep.exps[0].name, "config": str(sweep.config), "overrides": list(sweep.overrides),
        "grid": [[k, list(v)] for k, v in sweep.grid], "seeds": list(sweep.seeds),
        "rounds": sweep.exps[0].train.rounds, "dataset": dataset, "data_source": source, "table": rows,
    }
    results.write_summary(out, summary)
    return summary

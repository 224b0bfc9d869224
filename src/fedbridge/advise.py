"""`fedbridge advise`: per client, does joining the federation help, with which strategy, and how sure
is that over seeds?

Every candidate strategy is an ordinary run directory ADVICE_DIR/runs/<strategy>/ of the same config,
seeds and federation. The first candidate also trains each client alone (baselines = ["local"]), the
others nothing beside their strategy: "alone" is trained once, and every candidate's gain is paired by
seed with that same local run. ADVICE_DIR/command.json holds what was asked and advise.json the
verdicts. The same command run again keeps the finished runs, resumes an interrupted one and refuses a
different command in an existing directory, as `fedbridge sweep` does.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError
from rich.console import Console

from fedbridge import files, results
from fedbridge.errors import ConfigError
from fedbridge.experiment import Experiment, load_experiment, validate
from fedbridge.schema import LOCAL
from fedbridge.strategies import registry
from fedbridge.strategies.registry import StrategyConfig
from fedbridge.study import run_study

# One reference and the families that did best for the worst-off client in the strategy benchmark
# (README, "Strategies"): FedAvg; SCAFFOLD, the best global model under IID (plain SGD only, so it is
# skipped under Adam); Ditto, FedPer and fine-tuning, the three kinds of personalization, the only ones
# that kept the worst client about as well off as alone under label skew. Left out: FedProx (at its
# default mu within 0.4 points of FedAvg there), the server optimizers (untuned rates), and the robust
# and quality rules (worse for the worst client in every scenario).
DEFAULT_CANDIDATES = ("fedavg", "scaffold", "ditto", "fedper", "finetune")
MAX_ADVISED_SEEDS = 50  # beyond this, "more seeds" stops being advice: the gain is too small to settle
RUNS = "runs"
LEVEL = 0.95

_STRATEGY = TypeAdapter(StrategyConfig)


@dataclass(frozen=True)
class Plan:
    config: Path
    overrides: tuple[str, ...]
    seeds: int
    candidates: dict[str, Experiment]  # in training order: the first also trains every client alone
    skipped: dict[str, str]  # a default candidate the config's setup refuses -> why

    def spec(self) -> dict:
        return {
            "config": str(self.config),
            "config_sha256": hashlib.sha256(self.config.read_bytes()).hexdigest(),
            "overrides": list(self.overrides),
            "strategies": list(self.candidates),
            "seeds": self.seeds,
        }


def _setup_refusal(table: dict, exp: Experiment) -> str | None:
    """Why the config's setup refuses this strategy table (too few clients, the wrong optimizer), or None;
    also None for a table whose own keys are wrong, which validate() then names."""
    try:
        return registry.check(_STRATEGY.validate_python(table), exp.setup)
    except ValidationError:
        return None


def plan(config: Path, overrides: list[str], strategies: list[str] | None, n_seeds: int) -> Plan:
    """Every candidate's experiment, validated before anything runs; bad input is a ConfigError (exit 2)."""
    if n_seeds < 2:
        raise ConfigError(f"--seeds {n_seeds}: a confidence interval over seeds needs at least 2; give --seeds 2 "
                          "or more (3 by default)")
    for o in overrides:
        key = o.partition("=")[0].strip()
        if key in ("seeds", "baselines"):  # both are the advice's own: each run's seeds and what it trains beside
            raise ConfigError(f"--set {key}=...: advise sets it itself in every run; give the number of seeds "
                              "with --seeds N and the strategies with --strategies")
    exp, tree = load_experiment(config, [*overrides, f"seeds={n_seeds}"])
    if exp.n_clients < 2:
        raise ConfigError(f"{config}: advise compares each client alone with it in a federation, and the config has "
                          f"{exp.n_clients} client; give at least 2 (clients groups' count)")
    known = registry.NAMES
    if strategies is not None:
        if unknown := [s for s in strategies if s not in known]:
            raise ConfigError(f"--strategies: {', '.join(map(repr, unknown))} unknown; choose from {', '.join(known)}")
        if len(set(strategies)) < len(strategies) or not strategies:
            raise ConfigError("--strategies: give each strategy once, as a,b,c")
    # the config's own strategy (with its keys) is always a candidate of the defaults
    configured = tree.get("strategy", {"name": "fedavg"})
    names = strategies or list(dict.fromkeys([configured.get("name", "fedavg"), *DEFAULT_CANDIDATES]))
    candidates, skipped = {}, {}
    for name in names:
        table = configured if configured.get("name", "fedavg") == name else {"name": name}
        if problem := _setup_refusal(table, exp):
            if strategies is not None:
                raise ConfigError(f"--strategies {name}: {problem}")
            skipped[name] = problem
            continue
        baselines = [] if candidates else [LOCAL]
        candidates[name] = validate({**tree, "strategy": table, "baselines": baselines},
                                    origin=f"{config} with --strategies {name}")
    return Plan(Path(config), tuple(overrides), n_seeds, candidates, skipped)


def default_dir(plan: Plan) -> Path:
    """The same command gives the same folder, so running it again continues the advice."""
    digest = hashlib.sha256(json.dumps(plan.spec(), sort_keys=True).encode()).hexdigest()[:8]
    return Path("advice") / f"{next(iter(plan.candidates.values())).name}-{digest}"


def open_advice_dir(out: Path, plan: Plan):
    """Make or reopen the advice directory and hold its lock for the block; one made by another command
    is refused, since its runs would be compared as if they were this one's."""
    return results.command_dir(out, results.ADVICE_COMMAND, plan.spec(), "an advice", "config, --set, --strategies or --seeds",
                               "run the same advise command again to continue it")


def train_all(plan: Plan, out: Path, data_dir: Path | None, console: Console, quiet: bool = False) -> None:
    """Train every candidate run that is not finished: a new one from scratch, an interrupted one resumed."""
    for name, exp in plan.candidates.items():
        run = out / RUNS / name
        if (run / results.SUMMARY).exists():
            console.print(f"{name}: finished already ({run}), kept", highlight=False)
            continue
        resume = (run / results.CONFIG).exists()
        console.print(f"{name}: {'resuming' if resume else 'training'} {run}", highlight=False)
        (out / RUNS).mkdir(exist_ok=True)
        run_study(exp, run, data_dir, console, resume=resume, quiet=quiet)


def final_records(run: Path) -> list[dict]:
    summary = results.read_summary(run)
    return [r for r in results.read_metrics(run) if r["round"] == summary["rounds"]]


def seeds_to_settle(gains: list[float], cap: int = MAX_ADVISED_SEEDS) -> int | None:
    """The fewest seeds n at which this spread's interval half-width t(0.975, n-1)·s/√n falls below the mean
    gain's magnitude, so that the interval would leave zero out if mean and spread stayed; None beyond `cap`."""
    import scipy.stats  # as in results.confidence_interval: a second to import, needed only here

    mean, std = results.mean_std(gains)
    for n in range(2, cap + 1):
        if scipy.stats.t.ppf((1 + LEVEL) / 2, n - 1) * std / math.sqrt(n) < abs(mean):
            return n
    return None


def verdict(gains: dict[str, list[float]]) -> dict:
    """The advice for one client from each candidate's gains over alone (one per seed, paired):
    join, with the candidate of highest mean gain among those whose interval lies above zero; stay alone
    if every candidate's interval lies below zero; otherwise undecided, with the candidate of highest mean
    gain and how many more seeds its spread suggests."""
    rows = {}
    for name, values in gains.items():
        low, high = results.confidence_interval(values, LEVEL, results.BOUNDS["gain"])
        rows[name] = {"gain": results.mean_std(values)[0], "ci_low": low, "ci_high": high, "n_seeds": len(values)}
    above = [n for n, r in rows.items() if r["ci_low"] > 0]
    best = max(above or rows, key=lambda n: rows[n]["gain"])
    kind = "join" if above else "stay" if all(r["ci_high"] < 0 for r in rows.values()) else "undecided"
    advice = {"best": best, **rows[best], "verdict": kind, "candidates": rows}
    if kind == "undecided":
        needed = seeds_to_settle(gains[best])
        advice["more_seeds"] = None if needed is None else max(needed - len(gains[best]), 1)
    return advice


def advise(plan: Plan, out: Path) -> list[dict]:
    """Per client, its verdict from the finished candidate runs; written to advise.json."""
    finals = {name: final_records(out / RUNS / name) for name in plan.candidates}  # each run read once
    local = [r for r in finals[next(iter(plan.candidates))] if r["method"] == LOCAL]
    by_candidate = {name: results.paired_gains(local + final, name) for name, final in finals.items()}
    profiles = {r["client"]: r["profile"] for r in local if r["test_set"] == "own"}
    rows = [{"client": client, "profile": profile,
             **verdict({name: gains[client] for name, gains in by_candidate.items()})}
            for client, profile in sorted(profiles.items())]
    files.atomic_write(out / results.ADVICE, json.dumps(rows, indent=1))
    return rows

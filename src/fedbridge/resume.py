"""Where an interrupted run stands: the (seed, method) pairs it finished, and the one it was
training when it stopped, rebuilt from the saved weights, the last checkpoint and the records.

Nothing is taken on its word: a weights file must have the sha256 recorded when it was written
(and its method its last round in metrics.jsonl), or that method is trained again; a checkpoint
must be one of this run (its seed, method, round and model), or resume stops and names it.
"""

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedbridge import client_state, detection, results, rounds
from fedbridge.client_state import ClientState
from fedbridge.data.datasets import Dataset
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.experiment import Experiment, Role
from fedbridge.models import build_model
from fedbridge.schema import LOCAL, Diagnostic
from fedbridge.strategies import fedper
from fedbridge.strategies.api import ServerState
from fedbridge.strategies.local_only import OWN

# what a checkpoint holds (study.py writes it): key -> the types its value may have
_CHECKPOINT = {"seed": int, "method": str, "round": int, "params": dict, "extra": dict, "seconds": dict,
               "elapsed": (int, float), "note": (str, type(None))}
_LATER = {"config": str, "detection": dict}  # absent in checkpoints made before they were kept


def resolved_config(exp: Experiment) -> dict:
    return exp.model_dump(mode="json", exclude_none=True)


def config_fingerprint(exp: Experiment) -> str:
    """What a checkpoint was made with, so a resume can tell that config.toml was edited since."""
    return hashlib.sha256(json.dumps(resolved_config(exp), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Current:
    """The pair a run was training when it stopped, and the state after its last checkpointed round."""

    seed: int
    method: str
    round: int
    state: ServerState
    elapsed: float  # training time already spent on it


@dataclass
class Position:
    finished: set[tuple[int, str]] = field(default_factory=set)  # (seed, method) with verified weights
    current: Current | None = None
    # training time of finished pairs, in seed order; None where it was not kept (no checkpoint had it)
    seconds: dict[str, list[float | None]] = field(default_factory=dict)
    # finished pairs' detection ROC-AUC per round: {seed: {method: {score: [auc per round]}}}
    detection: dict[str, dict[str, dict[str, list]]] = field(default_factory=dict)
    note: str | None = None
    retrained: list[str] = field(default_factory=list)  # why a pair whose weights were saved is trained again

    def rounds_done(self, rounds: int) -> int:
        return len(self.finished) * rounds + (self.current.round if self.current else 0)


def fresh(exp: Experiment) -> Position:
    return Position(seconds={m.name: [] for m in exp.methods})


def finished_summary(run: Path) -> dict:
    """The summary of a finished run once every weights file it lists is checked: `--resume` on a run
    with a summary.json trains nothing, so it refuses, naming the fix, rather than call a method whose
    weights were damaged or deleted since finished. It does not retrain on its own: a finished
    summary.json is the record of the run (a sweep never touches it again), and without the checkpoint
    the other methods' training times could not be rebuilt."""
    summary = results.read_summary(run)
    broken = [f"{results.weights_path(run, s, m)} {problem}" for s in summary["seeds"] for m in summary["methods"]
              if (problem := results.weights_problem(run, s, m))]
    if broken:
        raise FedbridgeError(f"{run} finished, but {'; '.join(broken)}. To train it again, {results.retrain_fix(run)}")
    return summary


def _legacy_detection(seed: int, method: str, state: ServerState) -> list[Diagnostic]:
    """Checkpoints made before diagnostics.jsonl kept the detection scores in the state
    ({score: [rounds, clients]}, NaN where a client was not sampled): taken out, as records."""
    history = state.extra.pop("detection", None)
    state.extra.pop("detection_clients", None)
    if not history:
        return []
    first = next(iter(history.values()))
    return [
        Diagnostic(seed=seed, method=method, round=r + 1, client=c + 1,
                   scores={name: rows[r, c].item() for name, rows in history.items()})
        for r in range(first.shape[0]) for c in range(first.shape[1]) if not math.isnan(first[r, c].item())
    ]


def _own_models_in_a_store(run: Path, exp: Experiment, dataset: Dataset, seed: int, method: str,
                            state: ServerState) -> ServerState:
    """Checkpoints made before client_state.py (2026-12-02) kept the clients' own models in the
    state's params [n, ...]: local-only's models, FedPer's and FedRep's (the body the same in every
    row, each client's head), Ditto's personal models (its global model in extra["global"]). Today
    params are one model [1, ...] and the own rows (FedPer's heads) are in a store, extra["own"],
    whose clients never written read as the seed's initial model: moved there, the same numbers, so
    the run continues exactly as it would have."""
    found = next(m for m in exp.methods if m.name == method)
    # by name: a noise-screened FedPer's spec is a wrapper of FedPer's
    kind = LOCAL if found.role is Role.LOCAL else found.strategy.name
    if OWN in state.extra or kind not in (LOCAL, "fedper", "fedrep", "ditto"):
        return state
    params, extra, n = state.params, dict(state.extra), exp.n_clients
    models = next(iter(params.values())).shape[0]
    problem = None
    if models != n:
        problem = f"its {method} holds {models} models, not one per client ({n})"
    elif kind == "ditto" and "global" not in extra:
        problem = f"its {method} has no global model (extra['global'])"
    elif kind in ("fedper", "fedrep") and any(not torch.equal(p, p[:1].expand_as(p)) for name, p in params.items()
                                              if name not in fedper.head_names(params)):
        problem = f"its {method}'s body differs between clients"
    if problem:
        raise FedbridgeError(f"{Path(run) / results.CHECKPOINT} was made before per-client state had a store, and "
                             f"cannot be continued ({problem}): {results.checkpoint_fix(run)}")
    initial = rounds.initial_model(build_model(exp.model, dataset.input_shape, dataset.num_classes), seed)
    if kind == "ditto":
        rows, shared, default = params, extra.pop("global"), initial
    elif kind == LOCAL:
        rows, shared, default = params, initial, initial
    else:
        head = fedper.head_names(params)
        rows, default = {k: params[k] for k in head}, {k: initial[k] for k in head}
        shared = {k: initial[k] if k in head else p[:1] for k, p in params.items()}
    extra[OWN] = ClientState(n, {k: p.clone() for k, p in default.items()}, rows=rows)
    return ServerState(shared, extra)


def _form_problem(checkpoint: object) -> str | None:
    """Why what checkpoint.pt holds does not have a checkpoint's keys and types, or None."""
    if not isinstance(checkpoint, dict):
        return f"it holds a {type(checkpoint).__name__}, not a dict"
    missing = [key for key in _CHECKPOINT if key not in checkpoint]
    if missing:
        return f"it has no {', '.join(map(repr, missing))}"
    for key, kinds in (_CHECKPOINT | _LATER).items():
        if key in checkpoint and (isinstance(checkpoint[key], bool) or not isinstance(checkpoint[key], kinds)):
            return f"its {key!r} is a {type(checkpoint[key]).__name__}"
    params = checkpoint["params"]
    if not params or not all(isinstance(p, torch.Tensor) and p.is_floating_point() for p in params.values()):
        return "its 'params' are not parameter names to float tensors"
    if not all(map(_numbers, checkpoint["seconds"].values())):
        return "its 'seconds' are not method names to lists of seconds"
    if not all(str(seed).isdigit() and isinstance(per, dict) and all(
            isinstance(scores, dict) and all(map(_numbers, scores.values())) for scores in per.values())
            for seed, per in checkpoint.get("detection", {}).items()):
        return "its 'detection' is not {seed: {method: {score: [ROC-AUC per round]}}}"
    return None


def _numbers(values: object) -> bool:
    """Whether `values` is a list of numbers, None standing for one not known."""
    return isinstance(values, list) and all(x is None or type(x) in (int, float) for x in values)


def _run_problem(checkpoint: dict, exp: Experiment, seeds: list[int], dataset: Dataset) -> str | None:
    """Why a well-formed checkpoint is not one of this run: a seed, method or round the run does not
    have, or parameters that are not those of the model its config builds."""
    methods = [m.name for m in exp.methods]
    if checkpoint["seed"] not in seeds:
        return f"seed {checkpoint['seed']} is not one of the run's seeds, {', '.join(map(str, seeds))}"
    if checkpoint["method"] not in methods:
        return f"method {checkpoint['method']!r} is not one of the run's methods, {', '.join(methods)}"
    if not 1 <= checkpoint["round"] <= exp.train.rounds:
        return f"round {checkpoint['round']} is not one of the run's rounds, 1 to {exp.train.rounds}"
    model = build_model(exp.model, dataset.input_shape, dataset.num_classes)
    expected = {name: list(p.shape) for name, p in model.state_dict().items()}
    params = checkpoint["params"]
    if params.keys() != expected.keys():
        return f"its parameters {', '.join(map(str, params))} are not those of the run's {exp.model}, {', '.join(expected)}"
    for name, p in params.items():
        if list(p.shape[1:]) != expected[name]:  # [models, ...]: one global model, or one per client
            shape = ", ".join(map(str, expected[name]))
            return f"its parameter {name} is {list(p.shape)}, the run's {exp.model} has [models, {shape}]"
    models = sorted({p.shape[0] for p in params.values()})
    if len(models) > 1 or models[0] not in (1, exp.n_clients):
        return (f"it holds {' and '.join(map(str, models))} models; a method of this run holds 1, or one per "
                f"client ({exp.n_clients})")
    return None


def _checked(run: Path, exp: Experiment, seeds: list[int], dataset: Dataset) -> dict | None:
    """The checkpoint, if there is one, once it is known to be one of this run."""
    checkpoint = results.load_checkpoint(run)
    if checkpoint is None:
        return None
    problem = _form_problem(checkpoint)
    # before the run's checks: a config edited since (fewer rounds, another model) is the thing to say
    # (a checkpoint from before fingerprints were kept has none, and is taken on trust)
    if not problem and checkpoint.get("config") not in (None, config_fingerprint(exp)):
        raise ConfigError(
            f"{Path(run) / results.CONFIG} was changed after this run started, so its finished rounds do not "
            "belong to it; put the original back to resume, or start a new run with the changed config "
            "(fedbridge run CONFIG --out NEW_DIR)"
        )
    problem = problem or _run_problem(checkpoint, exp, seeds, dataset)
    if problem:
        raise FedbridgeError(f"{Path(run) / results.CHECKPOINT} is not a checkpoint of this run ({problem}); it was "
                             f"damaged or replaced: {results.checkpoint_fix(run)}")
    return checkpoint


def _seconds(exp: Experiment, seeds: list[int], finished: set, checkpoint: dict | None) -> dict[str, list[float | None]]:
    """Each method's training time for its finished pairs: a checkpoint keeps those of the pairs
    finished before its own, in seed order (pairs finish seed by seed), and its own elapsed time;
    what it does not have (nothing, without a checkpoint) is None, so the summary says it is unknown."""
    kept = checkpoint["seconds"] if checkpoint else {}
    own = (checkpoint["seed"], checkpoint["method"]) if checkpoint else None
    seconds: dict[str, list[float | None]] = {}
    for m in exp.methods:
        spent = kept.get(m.name, [])
        seconds[m.name] = [
            checkpoint["elapsed"] if (s, m.name) == own else spent[i] if i < len(spent) else None
            for i, s in enumerate(seeds) if (s, m.name) in finished
        ]
    return seconds


def _detection(exp: Experiment, position: Position, checkpoint: dict | None, diagnostics: list[dict]) -> dict:
    """The checkpoint's detection curves of the pairs finished or under way, and for each finished
    federated pair it lacks (all of them when summary.json is rebuilt after the checkpoint was removed),
    the curves made again from diagnostics.jsonl as the study makes them."""
    under_way = {(position.current.seed, position.current.method)} if position.current else set()
    curves = {seed: {m: c for m, c in per.items() if (int(seed), m) in position.finished | under_way}
              for seed, per in (checkpoint or {}).get("detection", {}).items()}
    noisy = [p.label != "clean" for p in exp.profiles]
    federated = [m.name for m in exp.methods if m.role is Role.FEDERATED]
    for seed, method in sorted(position.finished):
        if method in federated and method not in curves.get(str(seed), {}) and (
                found := detection.pair_curves(diagnostics, seed, method, noisy, exp.train.rounds)):
            curves.setdefault(str(seed), {})[method] = found
    return {seed: per for seed, per in curves.items() if per}


def restore(run: Path, exp: Experiment, seeds: list[int], dataset: Dataset) -> Position:
    """Rebuild the position from the weights saved and the last checkpoint, and cut metrics.jsonl and
    diagnostics.jsonl back to exactly what that position had written, so the resumed run appends the
    rest once. A pair whose weights file is damaged, or whose metrics stop before its last round, is
    trained again (listed in `retrained`)."""
    run, rounds = Path(run), exp.train.rounds
    checkpoint = _checked(run, exp, seeds, dataset)
    metrics = results.read_metrics(run)
    ended = {(r["seed"], r["method"]) for r in metrics if r["round"] == rounds}
    position = fresh(exp)
    for seed, method in ((s, m.name) for s in seeds for m in exp.methods):
        if not results.weights_saved(run, seed, method):
            continue
        problem = results.weights_problem(run, seed, method)
        if problem is None and (seed, method) not in ended:
            problem = f"is saved, but {results.METRICS} has no round {rounds} of it"
        if problem:
            position.retrained.append(f"{results.weights_path(run, seed, method)} {problem}: "
                                      f"seed {seed}'s {method} is trained again")
        else:
            position.finished.add((seed, method))
    limit: dict[tuple[int, str], int] = {pair: rounds for pair in position.finished}
    legacy: list[Diagnostic] = []
    if checkpoint is not None:
        pair = (checkpoint["seed"], checkpoint["method"])
        position.note = checkpoint["note"]
        if pair not in position.finished:  # else it ended after this checkpoint, before the next pair's first one
            state = ServerState(checkpoint["params"], client_state.reopened(checkpoint["extra"], run))
            state = _own_models_in_a_store(run, exp, dataset, *pair, state)
            legacy = _legacy_detection(*pair, state)
            position.current = Current(*pair, checkpoint["round"], state, checkpoint["elapsed"])
            limit[pair] = checkpoint["round"]
    position.seconds = _seconds(exp, seeds, position.finished, checkpoint)

    def kept(records: list[dict]) -> list[dict]:
        return [r for r in records if r["round"] <= limit.get((r["seed"], r["method"]), -1)]

    diagnostics = kept(results.read_diagnostics(run)) + legacy
    position.detection = _detection(exp, position, checkpoint, diagnostics)
    # rewritten even when nothing is dropped: a cut last line would otherwise prefix the next append
    results.rewrite_lines(run, results.METRICS, kept(metrics))
    results.rewrite_lines(run, results.DIAGNOSTICS, diagnostics)
    return position

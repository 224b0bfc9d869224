"""Where an interrupted run stands: the (seed, method) pairs it finished, and the one it was
training when it stopped, rebuilt from the saved weights and the last checkpoint."""

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from fedbridge import results
from fedbridge.errors import ConfigError
from fedbridge.experiment import Experiment
from fedbridge.schema import Diagnostic
from fedbridge.strategies.api import ServerState


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
    finished: set[tuple[int, str]] = field(default_factory=set)  # (seed, method) with saved weights
    current: Current | None = None
    seconds: dict[str, list[float]] = field(default_factory=dict)  # training time of finished pairs
    # finished pairs' detection ROC-AUC per round: {seed: {method: {score: [auc per round]}}}
    detection: dict[str, dict[str, dict[str, list]]] = field(default_factory=dict)
    note: str | None = None

    def rounds_done(self, rounds: int) -> int:
        return len(self.finished) * rounds + (self.current.round if self.current else 0)


def fresh(exp: Experiment) -> Position:
    return Position(seconds={m.name: [] for m in exp.methods})


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


def restore(run: Path, exp: Experiment, seeds: list[int]) -> Position:
    """Rebuild the position from the weights saved and the last checkpoint, and cut metrics.jsonl and
    diagnostics.jsonl back to exactly what that position had written, so the resumed run appends the
    rest once."""
    checkpoint = results.load_checkpoint(run)
    pairs = [(s, m.name) for s in seeds for m in exp.methods]
    position = fresh(exp)
    position.finished = {pair for pair in pairs if results.weights_saved(run, *pair)}
    limit: dict[tuple[int, str], int] = {pair: exp.train.rounds for pair in position.finished}
    # a checkpoint from before fingerprints were kept has none, and is taken on trust
    if checkpoint is not None and checkpoint.get("config") not in (None, config_fingerprint(exp)):
        raise ConfigError(
            f"{Path(run) / results.CONFIG} was changed after this run started, so its finished rounds do not "
            "belong to it; put the original back to resume, or start a new run with the changed config "
            "(fedbridge run CONFIG --out NEW_DIR)"
        )
    legacy: list[Diagnostic] = []
    if checkpoint is not None:
        pair = (checkpoint["seed"], checkpoint["method"])
        position.note = checkpoint["note"]
        for method, spent in checkpoint["seconds"].items():
            position.seconds[method] = list(spent)
        position.detection = checkpoint.get("detection", {})
        if pair in position.finished:  # it ended after this checkpoint, before the next pair's first one
            position.seconds[pair[1]].append(checkpoint["elapsed"])
        else:
            state = ServerState(checkpoint["params"], checkpoint["extra"])
            legacy = _legacy_detection(*pair, state)
            position.current = Current(*pair, checkpoint["round"], state, checkpoint["elapsed"])
            limit[pair] = checkpoint["round"]

    def kept(records: list[dict]) -> list[dict]:
        return [r for r in records if r["round"] <= limit.get((r["seed"], r["method"]), -1)]

    # rewritten even when nothing is dropped: a cut last line would otherwise prefix the next append
    results.rewrite_lines(run, results.METRICS, kept(results.read_metrics(run)))
    results.rewrite_lines(run, results.DIAGNOSTICS, kept(results.read_diagnostics(run)) + legacy)
    return position

"""The ServerApp: the simulation engine's round loop, with the clients' work done by SuperNodes.

Per round, as in engines/simulation.py and with its functions: sample clients -> strategy's
starting parameters -> each sampled node trains (client_app.py) -> aggregate weighted by the nodes'
sample counts -> every node evaluates the global model on its own and the clean test data. Nodes
that do not answer within `round-timeout` are left out of that step; fewer than `min-nodes`
answers and the run stops, keeping the rounds already written to `out-dir` (channel.py). A reply
that is not what the server asked for (wrong arrays, non-finite numbers, an impossible sample
count) is rejected as if that node had not answered: one bad client must not spoil the global model.
"""

import math
import os
import time
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedbridge.engines.flower import channel
from fedbridge.engines.flower.arrays import from_record, to_record
from fedbridge.engines.flower.replies import Expected, evaluate_expected, reply_problem, train_expected
from fedbridge.engines.simulation import STREAM_INIT, sample_clients
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.experiment import Experiment, load_experiment
from fedbridge.local import LocalResult, client_generator
from fedbridge.models import build_model, init_params
from fedbridge.strategies.api import Strategy
from fedbridge.strategies.registry import build

# how often the server asks the SuperLink for replies; Grid.send_and_receive waits 3 s between asks
POLL_SECONDS = 0.2

app = ServerApp()


@dataclass(frozen=True)
class Settings:
    """The App's run config (app/pyproject.toml, overridden by `flwr run --run-config`)."""

    config: Path
    overrides: list[str]  # KEY=VALUE, as `fedbridge run --set`
    seed: int  # -1: the config's own seed
    out_dir: Path
    round_timeout: float
    min_nodes: int
    connect_timeout: float

    @classmethod
    def from_run_config(cls, run_config: dict) -> "Settings":
        if not run_config.get("config"):
            raise ConfigError(
                "the run config has no `config`: pass the experiment file, e.g. "
                "flwr run APP CONNECTION --run-config 'config=\"/abs/path/configs/seed.toml\"'"
            )
        settings = cls(
            Path(str(run_config["config"])), str(run_config.get("set", "")).split(), _number(run_config, "seed", int),
            Path(str(run_config["out-dir"])), _number(run_config, "round-timeout", float),
            _number(run_config, "min-nodes", int), _number(run_config, "connect-timeout", float),
        )
        if problem := limits_problem(settings.round_timeout, settings.min_nodes, settings.connect_timeout):
            raise ConfigError(f"run config {problem}; set it with flwr run ... --run-config '{problem.split()[0]}=...'")
        return settings


def _number(run_config: dict, key: str, kind: type) -> float | int:
    value = run_config.get(key)  # Flower fills in every key the App's pyproject.toml sets
    # bool is an int to Python, but `min-nodes=true` is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or kind is int and not float(value).is_integer():
        raise ConfigError(f"run config {key}={value!r} is not {'a whole number' if kind is int else 'a number'}; "
                          f"e.g. --run-config '{key}=60'")
    return kind(value)


def limits_problem(round_timeout: float, min_nodes: int, connect_timeout: float) -> str | None:
    """What is wrong with a run's waiting times and minimum of answering nodes, named by their flag
    (round-timeout, min-nodes, connect-timeout), or None. An infinite wait could hang a run forever."""
    for name, seconds in (("round-timeout", round_timeout), ("connect-timeout", connect_timeout)):
        if not (math.isfinite(seconds) and seconds >= 1):
            return f"{name} {seconds} must be a finite number of seconds >= 1"
    if min_nodes < 1:
        return f"min-nodes {min_nodes} must be at least 1: a round needs some node's answer"
    return None


def writable_out_dir(out: Path) -> None:
    """Create the out-dir, or say why it cannot be used, before any node does work for nothing."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"run config out-dir {out} cannot be created ({e.strerror}); give a folder the ServerApp "
                          "can write, e.g. --run-config 'out-dir=\"/abs/path/out\"'") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"run config out-dir {out} is not writable; give a folder the ServerApp can write")


def flower_strategy(exp: Experiment) -> Strategy:
    """The experiment's strategy (the simulation engine's), if its clients only run fedbridge's plain
    local update and the server keeps one global model: those are what the ClientApp does so far."""
    strategy = build(exp.strategy, exp.train)
    plain = strategy.local is None and not strategy.finetune_epochs
    if plain:
        probe = strategy.init({"w": torch.zeros(1, 1)}, exp.n_clients)
        plain = probe.params["w"].shape[0] == 1 and strategy.adjust(probe, torch.arange(exp.n_clients)) is None
    if not plain:
        raise ConfigError(
            f"strategy.name = {exp.strategy.name!r} needs client-side steps or per-client models, which run on the "
            "simulation engine only so far; on Flower use a server-side strategy such as fedavg"
        )
    return strategy


@dataclass
class Nodes:
    """The SuperNodes of a run: node id of each client (partition id)."""

    grid: Grid
    node_of: dict[int, int]
    timeout: float
    minimum: int
    # every client left out of a round's step: {"round", "step", "client" (from 1), "reason"}
    left_out: list[dict] = field(default_factory=list)

    def exchange(self, what: str, messages: dict[int, Message], group: int | None = None,
                 name=lambda client: f"client {client + 1}",
                 expected: dict[int, Expected] | None = None) -> dict[int, Message]:
        """Send one message per client and collect the replies that come within the timeout and are
        as `expected` (if given): a rejected reply counts as no answer.

        Raises when fewer than the minimum answer; the clients left out are logged by `name`."""
        pushed = list(self.grid.push_messages(messages.values()))
        pending = dict(zip(pushed, messages))
        replies: dict[int, Message] = {}
        failed: dict[int, str] = {}
        deadline = time.monotonic() + self.timeout
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                client = pending.pop(reply.metadata.reply_to_message_id)
                if reply.has_error():
                    failed[client] = str(reply.error.reason)
                elif expected and (problem := reply_problem(reply.content, expected[client])):
                    failed[client] = f"its reply was rejected: {problem}"
                else:
                    replies[client] = reply
                if client in failed:
                    log(WARNING, "%s failed in %s: %s", name(client), what, failed[client])
            if pending:
                time.sleep(POLL_SECONDS)
        where = f"round {group}, {what}" if group else what
        silent = ", ".join(name(c) for c in sorted(pending.values()))
        if silent:
            log(WARNING, "%s: no answer from %s within %.0f s; going on without them", where, silent, self.timeout)
        if group:  # a round's step, so the keys are clients (numbered from 1 for people, as in metrics.jsonl)
            why = {**failed, **{c: f"no answer within {self.timeout:.0f} s" for c in pending.values()}}
            self.left_out.extend({"round": group, "step": what, "client": c + 1, "reason": why[c]} for c in sorted(why))
        needed = min(self.minimum, len(messages))
        if len(replies) < needed:
            errors = "".join(f"; {name(c)} failed: {reason}" for c, reason in sorted(failed.items()))
            raise FedbridgeError(
                f"{where}: only {len(replies)} of {len(messages)} nodes answered within {self.timeout:.0f} s "
                f"(minimum {needed}), so the run stopped{errors}" + (f"; no answer from {silent}" if silent else "")
                + ". Check those SuperNodes (their logs), or lower --min-nodes / raise --round-timeout"
            )
        return replies


def message(content: dict, node: int, kind: str, group: int | None = None) -> Message:
    return Message(RecordDict(content), dst_node_id=node, message_type=kind,
                   group_id=str(group) if group else None)


def described(content: RecordDict, n: int) -> tuple[int, int, tuple[int, ...], int]:
    """A node's answer to `describe`: its partition id, training samples, input shape and classes."""
    info = content.config_records.get("info", {})
    try:
        client, examples = int(info["partition-id"]), int(info["num-examples"])
        shape, classes = tuple(int(d) for d in info["input-shape"]), int(info["num-classes"])
    except (TypeError, KeyError, ValueError) as e:
        raise FedbridgeError(f"a SuperNode described itself without a valid {e}; is it running fedbridge's "
                             "ClientApp (the same version as the server)?") from None
    if not 0 <= client < n or examples < 1 or len(shape) != 3 or min(shape) < 1 or classes < 2:
        raise FedbridgeError(f"a SuperNode described itself as partition-id={client} with {examples} samples of "
                             f"shape {shape} in {classes} classes; expected partition-id 0..{n - 1} with some samples")
    return client, examples, shape, classes


@dataclass(frozen=True)
class Connected:
    """What the server learns at connect: the model's input and classes, each client's sample count."""

    input_shape: tuple[int, ...]
    num_classes: int
    examples: dict[int, int]


def connect(grid: Grid, exp: Experiment, config: ConfigRecord, settings: Settings,
            left_out: list[dict]) -> tuple[Nodes, Connected]:
    """Wait for one SuperNode per client and learn which client each one is."""
    n = exp.n_clients
    deadline = time.monotonic() + settings.connect_timeout
    while len(nodes := list(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise FedbridgeError(
                f"only {len(nodes)} of {n} SuperNodes connected within {settings.connect_timeout:.0f} s; every client "
                f"needs a running SuperNode that reaches the SuperLink (see the SuperNodes' logs; one started by hand "
                f"needs --node-config 'partition-id=I', I = 0..{n - 1})"
            )
        time.sleep(POLL_SECONDS)
    # before we know which node is which, a node is keyed by its own id
    probe = Nodes(grid, {}, settings.connect_timeout, n)
    replies = probe.exchange("connect", {node: message({"config": config}, node, "query") for node in nodes},
                             name=lambda node: f"SuperNode {node}")
    node_of, examples, kinds = {}, {}, set()
    for node, reply in replies.items():
        client, examples[client], shape, classes = described(reply.content, n)
        if client in node_of:
            raise FedbridgeError(f"two SuperNodes ({node_of[client]} and {node}) say they are partition-id={client}; "
                                 "give each node its own partition-id")
        node_of[client] = node
        kinds.add((shape, classes))
    if missing := sorted(set(range(n)) - set(node_of)):
        raise FedbridgeError(f"no SuperNode is partition-id {', '.join(map(str, missing))}; "
                             f"start one per client with partition-id 0..{n - 1}")
    if len(kinds) > 1:
        raise FedbridgeError(f"the SuperNodes' data differ in input shape or classes ({sorted(kinds)}); "
                             "all clients must hold data of one kind")
    (shape, classes), = kinds
    return Nodes(grid, node_of, settings.round_timeout, settings.min_nodes, left_out), Connected(shape, classes, examples)


def records_for(exp: Experiment, seed: int, round_: int, scores: dict[int, dict], cross: bool) -> list[dict]:
    """metrics.jsonl lines in the simulation engine's layout. With one global model, client c's model
    on client t's test data is what client t measured on its own."""
    profiles = [p.label for p in exp.profiles]

    def record(client: int, test_set: str, accuracy: float, loss: float) -> dict:
        return {"seed": seed, "method": exp.strategy.name, "round": round_, "client": client + 1,
                "profile": profiles[client], "test_set": test_set, "accuracy": accuracy, "loss": loss}

    out = []
    for target, score in scores.items():
        for client in scores:
            if client == target:
                out.append(record(client, "own", score["own-accuracy"], score["own-loss"]))
            elif cross:
                out.append(record(client, f"client:{target + 1}", score["own-accuracy"], score["own-loss"]))
    out.extend(record(c, "clean", s["clean-accuracy"], s["clean-loss"]) for c, s in scores.items())
    return out


def run(grid: Grid, exp: Experiment, seed: int, settings: Settings, left_out: list[dict]) -> None:
    """The rounds; every client left out of a step is added to `left_out` as it happens (Nodes.left_out),
    so a run that stops still tells who was missing before."""
    strategy = flower_strategy(exp)
    if settings.min_nodes > exp.n_clients:
        raise ConfigError(f"min-nodes {settings.min_nodes} is more than the experiment's {exp.n_clients} clients; "
                          f"use at most {exp.n_clients}")
    config = ConfigRecord({"experiment": exp.model_dump_json(), "seed": seed})
    nodes, connected = connect(grid, exp, config, settings, left_out)
    channel.write_connected(settings.out_dir)
    model = build_model(exp.model, connected.input_shape, connected.num_classes)
    initial = {n: p.unsqueeze(0) for n, p in init_params(model, client_generator(seed, STREAM_INIT)).items()}
    shapes = {n: tuple(p.shape[1:]) for n, p in initial.items()}
    state = strategy.init(initial, exp.n_clients)
    rounds = exp.train.rounds
    for r in range(1, rounds + 1):
        began = time.monotonic()
        ids = sample_clients(exp.n_clients, exp.train.client_fraction, seed, r)
        start = strategy.client_start(state, ids)
        round_config = ConfigRecord({**config, "round": r})
        replies = nodes.exchange("train", {
            client: message({"arrays": to_record({n: p[k : k + 1] for n, p in start.items()}), "config": round_config},
                            nodes.node_of[client], "train", r)
            for k, client in enumerate(ids.tolist())
        }, r, expected={c: train_expected(shapes, c, connected.examples[c]) for c in ids.tolist()})
        answered = sorted(replies)
        trained = [from_record(replies[c].content["arrays"]) for c in answered]
        metrics = [replies[c].content["metrics"] for c in answered]
        result = LocalResult(
            {n: torch.cat([t[n] for t in trained]) for n in trained[0]},
            torch.tensor([float(m["steps"]) for m in metrics]), torch.tensor([float(m["loss"]) for m in metrics]),
        )
        weights = torch.tensor([float(m["num-examples"]) for m in metrics])
        state = strategy.aggregate(state, torch.tensor(answered), result, weights)
        if r % exp.eval.every == 0 or r == rounds:
            replies = nodes.exchange("evaluate", {
                client: message({"arrays": to_record(state.params), "config": round_config}, node, "evaluate", r)
                for client, node in nodes.node_of.items()
            }, r, expected={c: evaluate_expected(c) for c in nodes.node_of})
            scores = {c: dict(replies[c].content["metrics"]) for c in sorted(replies)}
            records = records_for(exp, seed, r, scores, exp.eval.cross_clients and r == rounds)
            channel.write_round(settings.out_dir, r, records, state)
            own = ", ".join(f"client {c + 1} {100 * s['own-accuracy']:.1f}%" for c, s in scores.items())
            log(INFO, "round %d/%d in %.1f s: own test accuracy %s", r, rounds, time.monotonic() - began, own)


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        settings = Settings.from_run_config(context.run_config)
        writable_out_dir(settings.out_dir)
    except ConfigError as e:
        log(ERROR, "%s", e)
        return
    log(INFO, "fedbridge writes this run's rounds to %s", settings.out_dir.resolve())
    left_out: list[dict] = []
    try:
        exp, _ = load_experiment(settings.config, settings.overrides)
        run(grid, exp, exp.seed if settings.seed < 0 else settings.seed, settings, left_out)
    except FedbridgeError as e:
        log(WARNING, "%s", e)
        channel.write_end(settings.out_dir, False, str(e), left_out)
        return
    except BaseException as e:
        channel.write_end(settings.out_dir, False, f"the ServerApp failed: {e!r}", left_out)
        raise
    channel.write_end(settings.out_dir, True, "", left_out)

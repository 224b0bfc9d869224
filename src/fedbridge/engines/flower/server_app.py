"""The ServerApp: fedbridge's one round loop (fedbridge.rounds), with the clients' work done by
SuperNodes through the message exchange of transport.py.

Per round, as in the simulation: sample clients -> the strategy's local step, each sampled node
training (client_app.py) -> aggregate weighted by the nodes' sample counts -> every node evaluates
its model on its own and the clean test data. Nodes that do not answer within `round-timeout` are
left out of that step; fewer than `min-nodes` answers and the run stops, keeping the rounds already
written to `out-dir` (channel.py). A reply that is not what the server asked for (wrong arrays,
non-finite numbers, an impossible sample count) is rejected as if that node had not answered: one
bad client must not spoil the global model.
"""

import math
import os
import time
from dataclasses import dataclass, replace
from logging import ERROR, INFO, WARNING
from pathlib import Path

from flwr.app import ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedbridge import rounds
from fedbridge.engines.flower import channel, personal, secagg
from fedbridge.engines.flower.personal import Seen
from fedbridge.engines.flower.replies import described
from fedbridge.engines.flower.secagg import SecAgg
from fedbridge.engines.flower.secagg_server import secure_transport
from fedbridge.engines.flower.transport import POLL_SECONDS, Nodes, OnNodes, flower_transport, message
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.experiment import Experiment, load_experiment
from fedbridge.models import build_model, norm_state
from fedbridge.strategies import registry
from fedbridge.strategies.api import ServerState

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
    train_ahead: bool = True  # round r's evaluation sent with round r+1's training (transport.py)
    resume: Path | None = None  # channel.write_resume's file: continue after its round from its state
    secagg: SecAgg | None = None  # train through SecAgg+ (secagg.py)

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
            _switch(run_config, "train-ahead"), Path(str(run_config["resume"])) if run_config.get("resume") else None,
            secagg.from_run_config(run_config),
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


def _switch(run_config: dict, key: str) -> bool:
    value = run_config.get(key, True)
    if not isinstance(value, bool):
        raise ConfigError(f"run config {key}={value!r} is not true or false; e.g. --run-config '{key}=false'")
    return value


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


def deployable(exp: Experiment) -> None:
    """Refuse, before anything starts, what the ClientApp cannot run, naming why (StrategySpec.flower)."""
    config = exp.strategy
    if getattr(config, "noise_screen", None):
        raise ConfigError(f"strategy.noise_screen on strategy.name = {config.name!r} runs on the simulation engine only: "
                          "Flower's clients do not report FedNS's score; remove strategy.noise_screen to deploy")
    if not registry.spec(config).flower:
        raise ConfigError(f"strategy.name = {config.name!r} runs on the simulation engine only: its server reads what "
                          "Flower's clients do not report; on Flower use another strategy, e.g. fedavg")
    private = exp.privacy is not None and exp.privacy.level == "client" and exp.private(exp.method(config.name))
    if private and registry.keeps_parameters(config):
        raise ConfigError(f"strategy.name = {config.name!r}{' with keep_local' if registry.kept_local(config) else ''} "
                          "keeps part of the model on each node, and client-level [privacy] clips the whole model's "
                          "update, which the server never sees there; deploy it without [privacy] level = \"client\"")


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
        kinds.add((shape, classes, str(reply.content.config_records["info"].get("class-names", ""))))
    if missing := sorted(set(range(n)) - set(node_of)):
        raise FedbridgeError(f"no SuperNode is partition-id {', '.join(map(str, missing))}; "
                             f"start one per client with partition-id 0..{n - 1}")
    if len(kinds) > 1:
        said = "; ".join(f"input {shape}, {classes} classes" + (f" ({names.replace(chr(10), ', ')})" if names else "")
                         for shape, classes, names in sorted(kinds))
        raise FedbridgeError(f"the SuperNodes' data differ in input shape or classes ({said}); "
                             "all clients must hold data of one kind")
    (shape, classes, _), = kinds
    nodes = Nodes(grid, node_of, settings.round_timeout, settings.min_nodes, left_out, describe=config, examples=examples)
    return nodes, Connected(shape, classes, examples)


def node_experiment(exp: Experiment) -> str:
    """The experiment as the nodes get it. They run the plain local step unless the strategy's runs
    on the node (StrategySpec.on_node), so it goes without any other strategy (but its keep_local):
    a `custom` rule's module then need not be importable on every node."""
    if registry.spec(exp.strategy).on_node:
        return exp.model_dump_json()
    # a server-side rule's clients train as FedAvg's do, each keeping its own entries (keep_local)
    plain = registry.plain("fedavg").model_copy(update={"keep_local": registry.kept_local(exp.strategy)})
    return exp.model_copy(update={"strategy": plain}).model_dump_json()


def run(grid: Grid, exp: Experiment, seed: int, settings: Settings, left_out: list[dict]) -> None:
    """The rounds (fedbridge.rounds, the simulation's loop) with the clients' work sent to the nodes;
    every client left out of a step is added to `left_out` as it happens (Nodes.left_out), so a run
    that stops still tells who was missing before."""
    deployable(exp)
    secagg.check(exp, settings.secagg)
    if settings.min_nodes > exp.n_clients:
        raise ConfigError(f"min-nodes {settings.min_nodes} is more than the experiment's {exp.n_clients} clients; "
                          f"use at most {exp.n_clients}")
    config = ConfigRecord({"experiment": node_experiment(exp), "seed": seed})
    nodes, connected = connect(grid, exp, config, settings, left_out)
    channel.write_connected(settings.out_dir)
    model = build_model(exp.model, connected.input_shape, connected.num_classes)
    initial = rounds.initial_model(model, seed)
    method = exp.method(exp.strategy.name)
    schedule = rounds.schedule(method, exp, seed, [p.label for p in exp.profiles])
    began = [time.monotonic()]

    def on_round(r: int, records: list[dict], diagnostics: list[dict], state: ServerState) -> None:
        seconds = time.monotonic() - began[0]
        nodes.timings.append({"round": r, "step": "round", "seconds": seconds, "nodes": {}})
        channel.write_round(settings.out_dir, r, records, diagnostics, state)
        channel.write_timings(settings.out_dir, nodes.timings)
        own = ", ".join(f"client {x['client']} {100 * x['accuracy']:.1f}%" for x in records if x["test_set"] == "own")
        log(INFO, "round %d/%d in %.1f s: own test accuracy %s", r, exp.train.rounds, seconds, own)
        began[0] = time.monotonic()

    resume = channel.read_resume(settings.resume) if settings.resume else None
    # a strategy whose clients keep state runs their steps on the nodes (personal.py)
    spec = registry.spec(exp.strategy)
    on_nodes = OnNodes(Seen(), registry.personal(exp.strategy, initial, norm_state(model)),
                       first=resume[0] + 1 if resume else 1,
                       own_models=spec.scores_per_client or bool(registry.kept_local(exp.strategy))) \
        if personal.stateful(exp.strategy) else None
    transport = flower_transport(nodes, connected.examples, {n: tuple(p.shape[1:]) for n, p in initial.items()}, config,
                                 schedule, settings.train_ahead and settings.secagg is None, spec.on_node, on_nodes)
    if settings.secagg is not None:  # distributed DP-FedAvg then runs on the nodes, not around the strategy
        transport = secure_transport(transport, nodes, connected.examples, config, settings.secagg,
                                     spec.on_node, secagg.distributed_noise(exp, schedule))
        schedule = replace(schedule, wrap=lambda strategy: strategy)
    strategy = rounds.strategy(method, exp, model, schedule, personal.seam(on_nodes.seen) if on_nodes else None)
    rounds.train(strategy, transport, initial, schedule, on_round, resume)


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

"""The ServerApp: the simulation engine's round loop, with the clients' work done by SuperNodes.

Per round, as in engines/simulation.py and with its functions: sample clients -> strategy's
starting parameters -> each sampled node trains (client_app.py) -> aggregate weighted by the nodes'
sample counts -> every node evaluates the global model on its own and the clean test data. Nodes
that do not answer within `round-timeout` are left out of that step; fewer than `min-nodes`
answers and the run stops, keeping the rounds already written to `out-dir` (channel.py).
"""

import time
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedbridge.engines.flower import channel
from fedbridge.engines.flower.arrays import from_record, to_record
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
        return cls(
            Path(str(run_config["config"])), str(run_config.get("set", "")).split(), int(run_config.get("seed", -1)),
            Path(str(run_config["out-dir"])),
            float(run_config["round-timeout"]), int(run_config["min-nodes"]), float(run_config["connect-timeout"]),
        )


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

    def exchange(self, what: str, messages: dict[int, Message], group: int | None = None,
                 name=lambda client: f"client {client + 1}") -> dict[int, Message]:
        """Send one message per client and collect the replies that come within the timeout.

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
                    log(WARNING, "%s failed in %s: %s", name(client), what, reply.error.reason)
                else:
                    replies[client] = reply
            if pending:
                time.sleep(POLL_SECONDS)
        where = f"round {group}, {what}" if group else what
        silent = ", ".join(name(c) for c in sorted(pending.values()))
        if silent:
            log(WARNING, "%s: no answer from %s within %.0f s; going on without them", where, silent, self.timeout)
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


def connect(grid: Grid, exp: Experiment, config: ConfigRecord, settings: Settings) -> tuple[Nodes, dict]:
    """Wait for one SuperNode per client and learn which client each one is."""
    n = exp.n_clients
    deadline = time.monotonic() + settings.connect_timeout
    while len(nodes := list(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise FedbridgeError(
                f"only {len(nodes)} of {n} SuperNodes connected within {settings.connect_timeout:.0f} s; "
                f"start one per client with --node-config 'partition-id=I' (I = 0..{n - 1})"
            )
        time.sleep(POLL_SECONDS)
    # before we know which node is which, a node is keyed by its own id
    probe = Nodes(grid, {}, settings.connect_timeout, n)
    replies = probe.exchange("connect", {node: message({"config": config}, node, "query") for node in nodes},
                             name=lambda node: f"SuperNode {node}")
    node_of, info = {}, {}
    for node, reply in replies.items():
        described = reply.content["info"]
        client = int(described["partition-id"])
        if client in node_of:
            raise FedbridgeError(f"two SuperNodes ({node_of[client]} and {node}) say they are partition-id={client}; "
                                 "give each node its own partition-id")
        node_of[client], info = node, described
    if missing := sorted(set(range(n)) - set(node_of)):
        raise FedbridgeError(f"no SuperNode is partition-id {', '.join(map(str, missing))}; "
                             f"start one per client with partition-id 0..{n - 1}")
    return Nodes(grid, node_of, settings.round_timeout, settings.min_nodes), info


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


def run(grid: Grid, exp: Experiment, seed: int, settings: Settings) -> None:
    strategy = flower_strategy(exp)
    config = ConfigRecord({"experiment": exp.model_dump_json(), "seed": seed})
    nodes, info = connect(grid, exp, config, settings)
    model = build_model(exp.model, tuple(info["input-shape"]), int(info["num-classes"]))
    initial = {n: p.unsqueeze(0) for n, p in init_params(model, client_generator(seed, STREAM_INIT)).items()}
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
        }, r)
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
            }, r)
            scores = {c: dict(replies[c].content["metrics"]) for c in sorted(replies)}
            records = records_for(exp, seed, r, scores, exp.eval.cross_clients and r == rounds)
            channel.write_round(settings.out_dir, r, records, state)
            own = ", ".join(f"client {c + 1} {100 * s['own-accuracy']:.1f}%" for c, s in scores.items())
            log(INFO, "round %d/%d in %.1f s: own test accuracy %s", r, rounds, time.monotonic() - began, own)


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        settings = Settings.from_run_config(context.run_config)
    except ConfigError as e:
        log(ERROR, "%s", e)
        return
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    log(INFO, "fedbridge writes this run's rounds to %s", settings.out_dir.resolve())
    try:
        exp, _ = load_experiment(settings.config, settings.overrides)
        run(grid, exp, exp.seed if settings.seed < 0 else settings.seed, settings)
    except FedbridgeError as e:
        log(WARNING, "%s", e)
        channel.write_end(settings.out_dir, False, str(e))
        return
    except BaseException as e:
        channel.write_end(settings.out_dir, False, f"the ServerApp failed: {e!r}")
        raise
    channel.write_end(settings.out_dir, True)

"""The Flower transport of the round loop: a round's local training and evaluation as messages to
the clients' SuperNodes, their replies checked (replies.py) before anything uses them.

Each message costs a SuperNode's poll of the SuperLink (every 3 s in Flower 1.41), so the
evaluation of round r goes out together with the training of round r+1 when the next round's
clients would start from the evaluated model (a global model, as FedAvg's): the node scores the
model, trains from it, and answers both. Round r+1 uses that training only if its start is
exactly the evaluated model and its step plain; otherwise it is sent again, and the transport
stops training ahead for the rest of the run. One message a round instead of two.

A strategy whose clients keep state on their nodes (personal.py) gets one train message per node
a round, carrying the server's state rather than a start model, and every node evaluates with its
own state; it does not train ahead yet (a round trained ahead would have to be checked against
the whole state it started from, not only the model).
"""

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from logging import WARNING

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedbridge import rounds
from fedbridge.engines.flower.arrays import from_record, to_record
from fedbridge.engines.flower.personal import Seen, shared_bytes
from fedbridge.engines.flower.replies import (
    Expected, described, evaluate_expected, reply_problem, together, train_expected,
)
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.local import GradientAdjust
from fedbridge.optim import Params
from fedbridge.strategies.api import ClientUpdates, LocalTrain

# how often the server asks the SuperLink for replies; Grid.send_and_receive waits 3 s between asks
POLL_SECONDS = 0.1


@dataclass
class Nodes:
    """The SuperNodes of a run: node id of each client (partition id)."""

    grid: Grid
    node_of: dict[int, int]
    timeout: float
    minimum: int
    # every client left out of a round's step: {"round", "step", "client" (from 1), "reason"}
    left_out: list[dict] = field(default_factory=list)
    # every step's wall time and where each node's time went: {"round", "step", "seconds", "nodes"}
    timings: list[dict] = field(default_factory=list)
    # how to ask a node which client it is, and each client's sample count, for rejoin()
    describe: ConfigRecord | None = None
    examples: dict[int, int] = field(default_factory=dict)
    strangers: set[int] = field(default_factory=set)  # nodes that said they are no client of this run

    def rejoin(self) -> None:
        """Let SuperNodes that connected since the last step (one restarted after a crash gets a new
        node id) take over their client: each says which client it is, as at connect, and that
        client's messages go to it from now on. One that does not answer in time is asked again."""
        known = set(self.node_of.values()) | self.strangers
        new = [n for n in self.grid.get_node_ids() if n not in known]
        if self.describe is None or not new:
            return
        pending = dict(zip(self.grid.push_messages([message({"config": self.describe}, n, "query") for n in new]), new))
        for reply in replies_to(self.grid, pending, self.timeout):
            node = pending.pop(reply.metadata.reply_to_message_id)
            try:
                client, examples, _, _ = described(reply.content, len(self.examples))
            except FedbridgeError as e:
                client, examples = -1, str(e)
            if reply.has_error() or self.examples.get(client) != examples:
                log(WARNING, "SuperNode %d connected, but is no client of this run (%s)", node,
                    reply.error.reason if reply.has_error() else f"partition-id {client}, {examples} samples")
                self.strangers.add(node)
            else:
                log(WARNING, "client %d is back on SuperNode %d", client + 1, node)
                self.node_of[client] = node

    def exchange(self, what: str, messages: dict[int, Message], group: int | None = None,
                 name=lambda client: f"client {client + 1}",
                 expected: dict[int, Expected] | None = None, answered: int = 0) -> dict[int, Message]:
        """Send one message per client and collect the replies that come within the timeout and are
        as `expected` (if given): a rejected reply counts as no answer.

        Raises when fewer than the minimum answer (counting `answered` clients whose answer came
        before, with an earlier message); the clients left out are logged by `name`."""
        began = time.monotonic()
        pushed = list(self.grid.push_messages(messages.values())) if messages else []
        pending = dict(zip(pushed, messages))
        replies: dict[int, Message] = {}
        failed: dict[int, str] = {}
        for reply in replies_to(self.grid, pending, self.timeout):
            client = pending.pop(reply.metadata.reply_to_message_id)
            if reply.has_error():
                failed[client] = str(reply.error.reason)
            elif expected and (problem := reply_problem(reply.content, expected[client])):
                failed[client] = f"its reply was rejected: {problem}"
            else:
                replies[client] = reply
            if client in failed:
                log(WARNING, "%s failed in %s: %s", name(client), what, failed[client])
        self.timings.append({"round": group, "step": what, "seconds": time.monotonic() - began,
                             "nodes": timing(replies)})
        where = f"round {group}, {what}" if group else what
        silent = ", ".join(name(c) for c in sorted(pending.values()))
        if silent:
            log(WARNING, "%s: no answer from %s within %.0f s; going on without them", where, silent, self.timeout)
        if group:  # a round's step, so the keys are clients (numbered from 1 for people, as in metrics.jsonl)
            why = {**failed, **{c: f"no answer within {self.timeout:.0f} s" for c in pending.values()}}
            self.left_out.extend({"round": group, "step": what, "client": c + 1, "reason": why[c]} for c in sorted(why))
        needed = min(self.minimum, len(messages) + answered)
        if len(replies) + answered < needed:
            errors = "".join(f"; {name(c)} failed: {reason}" for c, reason in sorted(failed.items()))
            raise FedbridgeError(
                f"{where}: only {len(replies) + answered} of {len(messages) + answered} nodes answered within {self.timeout:.0f} s "
                f"(minimum {needed}), so the run stopped{errors}" + (f"; no answer from {silent}" if silent else "")
                + ". Check those SuperNodes (their logs), or lower --min-nodes / raise --round-timeout"
            )
        return replies


def replies_to(grid: Grid, ids: Iterable[str], timeout: float) -> Iterator[Message]:
    """The replies to the messages `ids` as they come, asking the SuperLink every POLL_SECONDS until
    each is answered or `timeout` seconds have passed."""
    pending = set(ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(pending)):
            pending.discard(reply.metadata.reply_to_message_id)
            yield reply
        if pending:
            time.sleep(POLL_SECONDS)


def message(content: dict, node: int, kind: str, group: int | None = None) -> Message:
    return Message(RecordDict(content), dst_node_id=node, message_type=kind,
                   group_id=str(group) if group else None)


def timing(replies: dict[int, Message]) -> dict[int, dict[str, float]]:
    """Where each node's time went (client_app.py's `seconds-*` metrics), by client."""
    return {c: {k: v for k, v in r.content.metric_records.get("metrics", {}).items() if k.startswith("seconds-")}
            for c, r in replies.items()}


@dataclass
class Ahead:
    """Round r+1's training, done by the nodes with round r's evaluation: from which model, and the replies."""

    round: int
    start: Params
    replies: dict[int, Message]

    def usable(self, round_: int, start: Params, k: int) -> bool:
        return round_ == self.round and all(torch.equal(start[n][k], p[0]) for n, p in self.start.items())


@dataclass
class OnNodes:
    """A strategy whose clients keep state on their nodes (personal.py): what the messages carry."""

    seen: Seen  # the state the strategy's step starts from
    kept: set[str]  # the model's parameters the clients keep to themselves (registry.personal)
    first: int  # the round this server began at (after a resume, the one after its checkpoint)
    own_models: bool  # whether each client is scored with a model of its own (else the global one)
    checkpoint: int = 0  # the server's last checkpointed (evaluated) round
    trained_at: dict[int, int] = field(default_factory=dict)  # each client's last round of training

    def config(self, config: ConfigRecord, round_: int) -> ConfigRecord:
        return ConfigRecord({**config, "round": round_, "first-round": self.first, "checkpoint-round": self.checkpoint,
                             "shared": shared_bytes(self.seen.state)})

    def check_state(self, replies: dict[int, Message], round_: int | None = None) -> None:
        """Warn about a node that lost its client's state (node_state.py), and note who trained."""
        for c, reply in replies.items():
            came_from = reply.content["metrics"].get("state-round", 0)
            if came_from < self.trained_at.get(c, 0):
                log(WARNING, "client %d's node has lost its state after round %d and continues from round %d's "
                    "(0: the strategy's initial one)", c + 1, self.trained_at[c], came_from)
            if round_ is not None:
                self.trained_at[c] = round_


def stand_ins(ids: torch.Tensor, weights: torch.Tensor, start: Params) -> ClientUpdates:
    """What the server holds of a model that stays on its node: the model it started from."""
    zeros = torch.zeros(len(ids))
    return ClientUpdates(ids, weights, {n: p.clone() for n, p in start.items()}, zeros, zeros)


def flower_transport(nodes: Nodes, examples: dict[int, int], shapes: dict[str, tuple[int, ...]],
                     config: ConfigRecord, schedule: rounds.Schedule, ahead: bool = True,
                     on_node: bool = False, on_nodes: OnNodes | None = None) -> rounds.Transport:
    """`examples`: each client's training samples, as it said at connect; `shapes`: the model's;
    `schedule`: the run's, to know the next round's clients; `ahead`: train with the evaluation;
    `on_node`: the nodes run the strategy's own local step (StrategySpec.on_node), gradient
    adjustment included, so the one the strategy asks for here is the one they make; `on_nodes`:
    they also keep their clients' state and evaluate with it (personal.py), without training ahead."""
    trained_ahead: list[Ahead] = []  # at most one: the next round's
    training_ahead = [ahead and on_nodes is None]

    def train_message(client: int, start: Params, round_: int, extra: dict) -> Message:
        content = {"arrays": to_record(start), "config": ConfigRecord({**config, "round": round_, **extra})}
        return message(content, nodes.node_of[client], "train", round_)

    def updates(replies: dict[int, Message]) -> ClientUpdates:
        answered = sorted(replies)
        trained = [from_record(replies[c].content["arrays"]) for c in answered]
        metrics = [replies[c].content["metrics"] for c in answered]
        return ClientUpdates(
            torch.tensor(answered), torch.tensor([float(m["num-examples"]) for m in metrics]),
            {n: torch.cat([t[n] for t in trained]) for n in trained[0]},
            torch.tensor([float(m["steps"]) for m in metrics]), torch.tensor([float(m["loss"]) for m in metrics]),
        )

    def local_on_nodes(round_: int, ids: torch.Tensor, stream: int) -> LocalTrain:
        """The round's one message per node; every call of the strategy's `local` reads its answers:
        the one with copy 0 the trained shared model, any other its stand-ins (personal.py)."""
        answered: list[ClientUpdates] = []
        weights = torch.tensor([float(examples[c]) for c in ids.tolist()])

        def train(start: Params, adjust: GradientAdjust | None = None, epochs: int | None = None,
                  copy: int = 0) -> ClientUpdates:
            if stream != rounds.STREAM_BATCHES:  # trained only to be scored: the node does it when it scores
                return stand_ins(ids, weights, start)
            if not answered:
                nodes.rejoin()
                sent = {n: p for n, p in shapes.items() if n not in on_nodes.kept}
                replies = nodes.exchange("train", {
                    c: message({"arrays": to_record(on_nodes.seen.state.params),
                                "config": on_nodes.config(config, round_)}, nodes.node_of[c], "train", round_)
                    for c in ids.tolist()
                }, round_, expected={c: train_expected(sent, c, examples[c]) for c in ids.tolist()})
                on_nodes.check_state(replies, round_)
                answered.append(updates(replies))
            got = answered[0]
            # `start` has a row per sampled client, or per answering one (built on an earlier call's answers)
            order = (ids if len(next(iter(start.values()))) == len(ids) else got.ids).tolist()
            rows = torch.tensor([order.index(c) for c in got.ids.tolist()])
            mine = {n: p[rows] for n, p in start.items()}
            if copy:
                return stand_ins(got.ids, got.weights, mine)
            return replace(got, params={**got.params, **{n: mine[n] for n in on_nodes.kept}})

        return train

    def local(round_: int, ids: torch.Tensor, stream: int) -> LocalTrain:
        if on_nodes is not None:
            return local_on_nodes(round_, ids, stream)

        def train(start: Params, adjust: GradientAdjust | None = None, epochs: int | None = None,
                  copy: int = 0) -> ClientUpdates:
            if adjust is not None and not on_node or epochs or copy or stream != rounds.STREAM_BATCHES:
                # deployable() refuses such strategies before the run; a hand-written one may still ask
                raise ConfigError("this strategy needs client-side steps the Flower ClientApp does not run yet")
            nodes.rejoin()
            clients = ids.tolist()
            done = trained_ahead.pop() if trained_ahead else None
            # a client whose node did not answer the evaluation is sent its training now
            ready = {c: done.replies[c] for c in clients if c in done.replies} if done else {}
            if done and not all(done.usable(round_, start, clients.index(c)) for c in ready):
                log(WARNING, "round %d started from another model than the one evaluated: training again, and no "
                    "longer with the evaluation", round_)
                training_ahead[0] = False
                ready = {}
            replies = nodes.exchange("train", {
                c: train_message(c, {n: p[k : k + 1] for n, p in start.items()}, round_, {})
                for k, c in enumerate(clients) if c not in ready
            }, round_, expected={c: train_expected(shapes, c, examples[c]) for c in clients}, answered=len(ready))
            return updates({**ready, **replies})

        return train

    def evaluate(params: Params, round_: int, cross: bool) -> list[rounds.Score]:
        """Each node scores its model (the global one, or its own row) on its own and the clean test
        data. With one global model, client c's model on client t's test data is what t measured."""
        nodes.rejoin()
        if on_nodes is not None:  # each node scores the model the strategy gives its client there
            on_nodes.checkpoint = round_  # the server checkpoints the round it evaluates
            params = on_nodes.seen.state.params
        one = next(iter(params.values())).shape[0] == 1 and not (on_nodes and on_nodes.own_models)
        after = rounds.sample_clients(len(examples), schedule.fraction, schedule.seed, round_ + 1).tolist() \
            if one and training_ahead[0] and round_ < schedule.rounds else []
        round_config = on_nodes.config(config, round_) if on_nodes else ConfigRecord({**config, "round": round_})
        messages = {}
        for client, node in nodes.node_of.items():
            model = params if one or on_nodes else {n: p[client : client + 1] for n, p in params.items()}
            if client in after:  # scored at round_, then trained for round_ + 1
                messages[client] = train_message(client, model, round_ + 1, {"evaluate-round": round_})
            else:
                messages[client] = message({"arrays": to_record(model), "config": round_config}, node, "evaluate", round_)
        expected = {c: together(train_expected(shapes, c, examples[c]), evaluate_expected(c)) if c in after
                    else evaluate_expected(c) for c in nodes.node_of}
        replies = nodes.exchange("evaluate", messages, round_, expected=expected)
        if on_nodes is not None:
            on_nodes.check_state(replies)
        if after:
            trained_ahead.append(Ahead(round_ + 1, params, {c: r for c, r in replies.items() if c in after}))
        scores = {c: dict(replies[c].content["metrics"]) for c in sorted(replies)}
        out = []
        for target, score in scores.items():
            for client in scores:
                if client == target:
                    out.append((client, "own", score["own-accuracy"], score["own-loss"]))
                elif cross and one:
                    out.append((client, f"client:{target + 1}", score["own-accuracy"], score["own-loss"]))
        out.extend((c, "clean", s["clean-accuracy"], s["clean-loss"]) for c, s in scores.items())
        return out

    return rounds.Transport(len(examples), local, evaluate)

"""The round loop's training step through Flower's SecAggPlusWorkflow (secagg.py says what it is).

The workflow is written for Flower's legacy strategies: it asks a `configure_fit` for each node's fit
instructions and hands `aggregate_fit` the unmasked weighted mean. `_Round` is that strategy for one
round of fedbridge's loop; the mean it receives becomes every answering client's row of the
ClientUpdates, so the round's strategy (a weighted mean of the rows, secagg.WEIGHTED_MEAN) computes
exactly it. Evaluation is the plain transport's: the global model is no secret.
"""

import json
import time
from dataclasses import dataclass
from logging import WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid

from fedbridge import rounds
from fedbridge.engines.flower.secagg import CLIP, MODULUS, NAMES, NOISE, SecAgg
from fedbridge.engines.flower.transport import Nodes, replies_to
from fedbridge.errors import ConfigError, FedbridgeError
from fedbridge.local import GradientAdjust
from fedbridge.optim import Params
from fedbridge.strategies.api import ClientUpdates, LocalTrain


@dataclass(frozen=True)
class _Proxy:
    node_id: int  # all the workflow reads of a legacy ClientProxy


@dataclass(frozen=True)
class _Available:
    clients: int

    def num_available(self) -> int:  # all the workflow asks a legacy ClientManager (for its log)
        return self.clients


class _Round:
    """The legacy strategy of one round: the sampled nodes' fit instructions, and the mean it is given."""

    def __init__(self, fitins: list[tuple[_Proxy, FitIns]]) -> None:
        self.fitins = fitins
        self.mean: Parameters | None = None
        self.results: list = []  # (proxy, FitRes) of every node whose masked update is in the mean

    def configure_fit(self, server_round, parameters, client_manager):
        return self.fitins

    def aggregate_fit(self, server_round, results, failures):
        self.mean, self.results = results[0][1].parameters, results
        return self.mean, {}


@dataclass(frozen=True)
class Polled:
    """The Grid as the workflow uses it, asking for replies every POLL_SECONDS (Grid's own
    send_and_receive waits 3 s between asks: 12 s a round over the protocol's four stages)."""

    grid: Grid

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        return list(replies_to(self.grid, self.grid.push_messages(messages), timeout or 0))


def secure_transport(plain: rounds.Transport, nodes: Nodes, examples: dict[int, int], config: ConfigRecord,
                     secagg: SecAgg, on_node: bool = False, noise: tuple[float, float] | None = None) -> rounds.Transport:
    """`plain`'s evaluation, with training through SecAgg+ (`on_node`: the strategy's local step runs
    on the nodes, as in transport.flower_transport; `noise`: distributed DP-FedAvg's clip and each
    node's noise std, secagg.distributed_noise, applied by the nodes, each of weight 1)."""
    # weights up to 1 (the largest client's, or DP's equal ones): the finest quantization of each update
    largest = 1.0 if noise else float(max(examples.values()))
    dp = {CLIP: noise[0], NOISE: noise[1]} if noise else {}

    def local(round_: int, ids: torch.Tensor, stream: int) -> LocalTrain:
        def train(start: Params, adjust: GradientAdjust | None = None, epochs: int | None = None,
                  copy: int = 0) -> ClientUpdates:
            if adjust is not None and not on_node or epochs or copy or stream != rounds.STREAM_BATCHES:
                raise ConfigError("this strategy needs client-side steps that secure aggregation does not run")
            nodes.rejoin()
            return _round(round_, ids.tolist(), start)

        return train

    def _round(round_: int, clients: list[int], start: Params) -> ClientUpdates:
        began = time.monotonic()
        names = list(start)
        round_config = {**config, "round": round_, NAMES: json.dumps(names), **dp}
        strategy = _Round([
            (_Proxy(nodes.node_of[c]), FitIns(ndarrays_to_parameters([start[n][k].numpy() for n in names]), round_config))
            for k, c in enumerate(clients)
        ])
        state = RecordDict({"config": ConfigRecord({"current_round": round_}), "parameters": ArrayRecord()})
        context = LegacyContext(Context(0, 0, {}, state, {}), strategy=strategy, client_manager=_Available(len(clients)))
        workflow = SecAggPlusWorkflow(secagg.shares, secagg.threshold, max_weight=largest, clipping_range=secagg.clip,
                                      quantization_range=secagg.quantization, modulus_range=MODULUS,
                                      timeout=nodes.timeout)
        workflow(Polled(nodes.grid), context)
        if strategy.mean is None:
            raise FedbridgeError(
                f"round {round_}, train: the secure aggregation of {len(clients)} nodes halted, as some node had fewer "
                f"than --secagg-threshold {secagg.threshold} answering neighbours (the shares that remove its masks), "
                f"so no sum is known and the run stopped. Check the SuperNodes' logs, or raise --round-timeout"
            )
        client_of = {node: c for c, node in nodes.node_of.items()}
        answered = sorted(client_of[proxy.node_id] for proxy, _ in strategy.results)
        metrics = {client_of[proxy.node_id]: fitres.metrics for proxy, fitres in strategy.results}
        missing = [c for c in clients if c not in metrics]
        reason = f"dropped out of the secure aggregation (no answer within {nodes.timeout:.0f} s at some stage)"
        nodes.left_out.extend({"round": round_, "step": "train", "client": c + 1, "reason": reason} for c in missing)
        nodes.timings.append({"round": round_, "step": "train", "seconds": time.monotonic() - began, "nodes": {
            c: {k: v for k, v in m.items() if k.startswith("seconds-")} for c, m in metrics.items()}})
        if missing:
            log(WARNING, "round %d: clients %s %s", round_, ", ".join(str(c + 1) for c in missing), reason)
        if len(answered) < (needed := min(nodes.minimum, len(clients))):
            raise FedbridgeError(f"round {round_}, train: only {len(answered)} of {len(clients)} nodes are in the "
                                 f"secure sum (minimum {needed}), so the run stopped. Check those SuperNodes (their "
                                 "logs), or lower --min-nodes / raise --round-timeout")
        mean = parameters_to_ndarrays(strategy.mean)
        k = len(answered)
        params = {n: (start[n][0] + torch.from_numpy(m).to(start[n].dtype)).expand(k, *start[n].shape[1:]).clone()
                  for n, m in zip(names, mean)}
        return ClientUpdates(
            torch.tensor(answered), torch.tensor([1.0 if noise else float(examples[c]) for c in answered]), params,
            torch.tensor([float(metrics[c]["steps"]) for c in answered]),
            torch.tensor([float(metrics[c]["loss"]) for c in answered]),
        )

    return rounds.Transport(plain.n_clients, local, plain.evaluate, plain.evaluate_some)

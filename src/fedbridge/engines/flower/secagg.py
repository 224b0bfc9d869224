"""SecAgg+ on the Flower deployment (`fedbridge deploy --secagg`): the server learns only the sum of
the round's client updates, never one client's (Bell et al. 2020, "Secure Single-Server Aggregation
with (Poly)Logarithmic Complexity"), through Flower's own `SecAggPlusWorkflow` and `secaggplus_mod`.

Each node quantizes its weighted update (its model after local training minus the model it was
sent) and masks it with pairwise masks agreed with its neighbours plus a private mask, both secret-
shared among those neighbours; the masks cancel in the sum, and a node that drops out after sharing
its keys has its masks removed from the shares of `threshold` of its neighbours. The server then
holds the weighted mean update and nothing else: this file holds the settings and what they compose
with, the node's side (`node_mod`); secagg_server.py drives the workflow for the round loop.
"""

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server.workflow import SecAggPlusWorkflow

from fedbridge.engines.flower.arrays import from_record, to_record
from fedbridge.errors import ConfigError
from fedbridge.experiment import Experiment
from fedbridge.privacy import dpfedavg
from fedbridge.privacy.config import update_noise
from fedbridge.rounds import Schedule, clients_per_round

# The model's parameter names travel with the fit instructions, whose legacy Parameters are a bare list
NAMES = "secagg-names"
# distributed DP-FedAvg (privacy.dpfedavg): the node clips its update to CLIP and adds its share of the
# noise, N(0, NOISE^2), before masking, and counts as one in the mean
CLIP, NOISE = "secagg-dp-clip", "secagg-dp-noise"
# Flower's largest modulus (SecAggPlusWorkflow: "must be less than 4294967296"): every masked entry
# and the sum of the round's quantized entries live modulo 2^32
MODULUS = 2**32
# strategies whose server step is a function of the weighted mean of the client models only, so the
# mean is all they need: FedAvg, the server optimizers, FedProx (its proximal term runs on the node)
WEIGHTED_MEAN = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox")


@dataclass(frozen=True)
class SecAgg:
    """SecAgg+'s keys. The defaults are Flower's: 3 shares with a reconstruction threshold of 2 as in
    Flower's flower-secure-aggregation example (each node's secrets are split among itself and 2
    neighbours, any 2 of whom can rebuild them: one neighbour may drop out), and SecAggPlusWorkflow's
    clipping range 8.0 and quantization range 2^22. The nodes send updates, not models, so entries
    beyond +-8 are rare; one quantization step is 2 * clip / quantization = 3.8e-6."""

    shares: int = 3
    threshold: int = 2
    clip: float = 8.0
    quantization: int = 2**22

    def run_config(self) -> dict:
        return {f"secagg-{k}": v for k, v in asdict(self).items()}

    def error_bound(self, examples: list[int]) -> float:
        """The most one entry of the round's mean update can differ from the exact weighted mean of
        clients with these sample counts, when no entry is clipped: each node sends its update times
        r = its samples / the largest client's, rounded stochastically to a step of 2 * clip /
        quantization, so the sum is off by less than one step per client, and the mean by that over
        the sum of the r (one step for clients of one size)."""
        step = 2 * self.clip / self.quantization
        return step * len(examples) * max(examples) / sum(examples)


def from_run_config(run_config: dict) -> SecAgg | None:
    """The App's run config `secagg = true` and its keys (fedbridge deploy --secagg), or None."""
    if run_config.get("secagg", False) is not True:
        return None
    keys = {k: run_config[f"secagg-{k}"] for k in ("shares", "threshold", "clip", "quantization")
            if f"secagg-{k}" in run_config}
    return SecAgg(**keys)


def problem(exp: Experiment, secagg: SecAgg) -> str | None:
    """Why the experiment cannot run with secure aggregation (naming the key or flag to change), or None."""
    name = exp.strategy.name
    if name not in WEIGHTED_MEAN or getattr(exp.strategy, "noise_screen", None) is not None:
        return (f"--secagg shows the server only the weighted sum of the client models, but strategy.name = "
                f"{name!r}{' with noise_screen' if name in WEIGHTED_MEAN else ''} needs each client's update "
                f"(robust rules, scores, per-client weights); with --secagg use one of {', '.join(WEIGHTED_MEAN)}")
    if (p := exp.privacy) is not None and p.level == "client" and (p.mode != "distributed" or p.adaptive):
        return ("--secagg with [privacy] level = \"client\" needs privacy.mode = \"distributed\" without "
                "privacy.adaptive: central DP-FedAvg clips and noises each client's update at the server, and "
                "adaptive clipping counts the clipped ones there, but secure aggregation hides them from it")
    k = clients_per_round(exp.n_clients, exp.train.client_fraction)
    if k < 2:
        return (f"--secagg needs at least 2 clients a round (a sum of one is that client's update), but "
                f"{exp.setup.per_round}; add clients or raise train.client_fraction")
    if k * secagg.quantization >= MODULUS:
        return (f"--secagg-quantization {secagg.quantization}: the sum of {k} clients' entries must stay below 2^32; "
                f"use at most {MODULUS // k - 1}")
    if not 2 <= secagg.threshold < secagg.shares or secagg.threshold > k:
        return (f"--secagg-threshold {secagg.threshold} must be at least 2, below --secagg-shares {secagg.shares} "
                f"and at most the {k} clients of a round: a node's secrets are rebuilt from that many shares")
    try:  # Flower's own checks of the numbers
        SecAggPlusWorkflow(secagg.shares, secagg.threshold, clipping_range=secagg.clip,
                           quantization_range=secagg.quantization, modulus_range=MODULUS)
    except (TypeError, ValueError) as e:
        return f"--secagg-shares/--secagg-threshold/--secagg-quantization: {e}"
    if not secagg.clip > 0:
        return f"--secagg-clip {secagg.clip} must be > 0: updates are clipped to [-clip, clip] before quantization"
    return None


def distributed_noise(exp: Experiment, schedule: Schedule) -> tuple[float, float] | None:
    """Client-level distributed DP-FedAvg's (clip C, each node's noise std σC/√m) for a run of
    `schedule`, which the nodes apply before masking, or None without it."""
    p = exp.privacy
    if p is None or p.level != "client" or schedule.privacy is None:
        return None
    m = clients_per_round(exp.n_clients, schedule.fraction)
    return p.clip, update_noise(p, schedule.privacy.sigma, m) * p.clip / math.sqrt(m)


def check(exp: Experiment, secagg: SecAgg | None) -> None:
    if secagg is not None and (why := problem(exp, secagg)):
        raise ConfigError(why)


def node_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The ClientApp's train messages of a SecAgg+ round go through Flower's secaggplus_mod; its
    collect stage trains through fedbridge's own train function (`_fit`). Any other message passes."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, lambda m, c: _fit(m, c, call_next))


def _fit(msg: Message, context: Context, train: ClientAppCallable) -> Message:
    """Flower's legacy fit instructions -> fedbridge's train message; its reply -> a legacy fit result
    whose parameters are the update, which secaggplus_mod quantizes and masks."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    names = json.loads(str(config.pop(NAMES)))
    start = {n: torch.from_numpy(a).unsqueeze(0) for n, a in zip(names, parameters_to_ndarrays(fitins.parameters))}
    msg.content = RecordDict({"arrays": to_record(start), "config": ConfigRecord(
        {k: v for k, v in config.items() if k not in (CLIP, NOISE)})})
    reply = train(msg, context)
    trained = from_record(reply.content["arrays"])
    metrics = dict(reply.content["metrics"])
    update = {n: trained[n] - start[n] for n in names}
    weight = int(metrics["num-examples"])
    if CLIP in config:  # as dpfedavg.wrap releases it, from the same random stream
        clipped, _ = dpfedavg.clip(update, float(config[CLIP]))
        client = torch.tensor([int(metrics["partition-id"])])
        update = dpfedavg.noised(clipped, client, float(config[NOISE]), "distributed", int(config["seed"]),
                                 int(config["round"]))
        weight = 1
    # Flower's stochastic rounding draws from numpy's global generator: seeded per run, round and
    # client, the same seed gives the same model
    key = f"{config['seed']}|{config['round']}|{metrics['partition-id']}".encode()
    np.random.seed(int.from_bytes(hashlib.sha256(key).digest()[:4], "little"))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([update[n][0].numpy() for n in names]), weight, metrics)
    reply.content = compat.fitres_to_recorddict(fitres, keep_input=False)
    return reply

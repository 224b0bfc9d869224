"""The Flower side of benchmarks.flower_round (which describes the setup), in a module of its own:
Ray's workers unpickle the apps by module name, so they cannot live in the __main__ that
`python -m benchmarks.flower_round` runs, and importing this one is where a missing Flower shows.
"""

import functools
import os
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from benchmarks import mcmahan_setup as setup
from fedbridge.local import Recipe, client_generator
from fedbridge.reference import reference_update
from fedbridge.rounds import STREAM_BATCHES, initial_model

SEED = 0


@functools.cache
def _federation() -> setup.McMahan:
    torch.set_num_threads(1)  # one actor per CPU, each single-threaded: no oversubscription
    return setup.federation(setup.load_mnist())


def client_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        fed = _federation()
        cid = int(context.node_config["partition-id"])
        config = message.content["config"]
        model = setup.model_for(str(config["model"]))
        start = {n: p.unsqueeze(0) for n, p in message.content["arrays"].to_torch_state_dict().items()}
        recipe = Recipe("sgd", float(config["lr"]), 10, int(config["epochs"]))
        generator = client_generator(SEED, STREAM_BATCHES, int(config["server-round"]), cid)
        result = reference_update(model, start, fed.images, fed.labels, [fed.rows[cid]], recipe, [generator])
        arrays = ArrayRecord({n: p[0].contiguous() for n, p in result.params.items()})
        metrics = MetricRecord({"num-examples": len(fed.rows[cid])})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)

    return app


class TimedFedAvg(FedAvg):
    """flwr's FedAvg, noting when each round's aggregation happens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.marks: list[float] = []

    def aggregate_train(self, server_round, replies):
        out = super().aggregate_train(server_round, replies)
        self.marks.append(time.perf_counter())
        return out


def server_app(model_name: str, epochs: int, rounds: int, lr: float, report: dict) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        model = setup.model_for(model_name)
        initial = {n: p[0] for n, p in initial_model(model, SEED).items()}
        strategy = TimedFedAvg(fraction_train=0.1, fraction_evaluate=0.0, min_available_nodes=100)
        began = time.perf_counter()
        result = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=rounds,
            train_config=ConfigRecord({"model": model_name, "epochs": epochs, "lr": lr}),
        )
        final = {n: p.unsqueeze(0) for n, p in result.arrays.to_torch_state_dict().items()}
        marks = [began, *strategy.marks]
        report["round_seconds"] = [b - a for a, b in zip(marks, marks[1:])]
        report["test_accuracy"] = setup.test_accuracy(model, final, _federation())

    return app


def simulate(model_name: str, epochs: int, rounds: int, lr: float, actors: int) -> dict:
    """The job on 100 virtual SuperNodes: its round times and final test accuracy."""
    report: dict = {}
    # the workers import this module by name: let them find the benchmarks package
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH")]))
    run_simulation(
        server_app=server_app(model_name, epochs, rounds, lr, report),
        client_app=client_app(),
        num_supernodes=100,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": actors}},
    )
    return report

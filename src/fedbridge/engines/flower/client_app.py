"""The ClientApp: one client of the federation on its own SuperNode.

The node's config says which client it is (`partition-id`, as Flower's simulation sets it too) and
where its data is: for benchmarks the shared dataset (`data-dir`, else FEDBRIDGE_DATA and the usual
places), of which the node keeps only its own share of the federation built with the shared seed;
for real use the node's own data (`data-folder` or `data-path`: a folder of IDX files, or the file
or folder of the format [data] names, own_dataset). The server sends the experiment
and the seed; the node applies its data-quality profile here (cached on the node), and no sample
leaves it. Training and evaluation are fedbridge's own functions with K=1.
"""

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import psutil
import torch
from pydantic import ValidationError
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedbridge.data.cache import cache_dir
from fedbridge.data.datasets import Dataset
from fedbridge.data.idx import read_idx, unreadable
from fedbridge.client_state import every_row
from fedbridge.engines.flower import node_state, personal
from fedbridge.engines.flower.arrays import from_record, to_record
from fedbridge.engines.flower.secagg import node_mod
from fedbridge.errors import ConfigError, DataError
from fedbridge.data.partitions import IID
from fedbridge.experiment import ClientGroup, Experiment
from fedbridge.federation import Client, Federation, build_federation, load_data
from fedbridge.files import atomic_write
from fedbridge.local import GradientAdjust, client_generator, evaluate, local_update
from fedbridge.models import build_model, norm_state
from fedbridge.optim import Params
from fedbridge.rounds import STREAM_BATCHES, STREAM_FINETUNE, initial_model, recipe
from fedbridge.strategies import registry
from fedbridge.strategies.api import ClientUpdates, LocalTrain, ServerState

app = ClientApp()


KEPT = 2  # data files a node keeps per client in the cache; older ones are removed
# a node's own data (node config `data-folder`): its training data, split like every client's into
# train and own test, and a test set it reports as the "clean" one
FOLDER_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def folder_dataset(folder: Path, name: str) -> Dataset:
    """A node's own data: the four IDX files (gzipped or not) of FOLDER_FILES in `folder`."""
    arrays = []
    for stem in FOLDER_FILES:
        found = [p for p in (folder / stem, folder / f"{stem}.gz") if p.exists() or p.is_symlink()]
        if not found:
            raise DataError(f"data-folder {folder} has no {stem}(.gz); it must hold {', '.join(FOLDER_FILES)} "
                            "(this node's training data and a test set), as IDX files")
        if problem := unreadable(found[0]):  # a folder, a pipe or a broken link where the file should be
            raise DataError(f"data-folder {folder}: {found[0].name} {problem}; put the IDX file itself there")
        arrays.append(read_idx(found[0]))
    train_images, train_labels, test_images, test_labels = arrays
    return Dataset(name, train_images, train_labels.astype(np.int64), test_images, test_labels.astype(np.int64),
                   source=str(folder))


def own_dataset(exp: Experiment, path: Path) -> Dataset:
    """A node's own data at `path` (node config `data-folder`, or `data-path`), in the format [data]
    names: a folder of IDX files (FOLDER_FILES) for MNIST-like data, else the file or folder that
    data.path would name, read as the simulation reads it (fedbridge.data.own). Where it has no
    test set, the node holds out data.common_test_fraction of its rows as its part of the common
    test set; a `client` column is no feature, as every row of the node is its one client's."""
    if exp.data.kind == "idx":
        return folder_dataset(path, exp.data.name)
    if exp.data.kind == "bundled":
        raise ConfigError(f"this node has its own data ({path}), but [data] names scikit-learn's {exp.data.name!r}; "
                          "set data.format (npz, csv, image-folder, cifar10) to the format of the nodes' files")
    mine = exp.data.model_copy(update={"path": path, "test_path": None})
    return load_data(exp.model_copy(update={"data": mine, "partition": IID(name="iid")}), None)


def build_own(exp: Experiment, seed: int, client: int, data_dir: str | None, data_folder: str | None) -> Federation:
    """Only this client's share of the benchmark federation, or, with `data_folder`, the node's own
    data as a one-client federation with this client's profile (split and corrupted the same way)."""
    if data_folder is None:
        full = build_federation(load_data(exp, data_dir), exp, seed)
        mine = full.clients[client]
    else:
        alone = exp.model_copy(update={"clients": [ClientGroup(profile=exp.profiles[client])], "partition": IID(name="iid")})
        full = build_federation(own_dataset(exp, Path(data_folder)), alone, seed)
        mine = full.clients[0]
    return Federation(
        full.dataset, full.source, full.num_classes, full.train_images[mine.train_rows],
        full.train_labels[mine.train_rows],
        [Client(client, mine.profile, torch.arange(len(mine.train_rows)), mine.test_images, mine.test_labels)],
        full.clean_test_images, full.clean_test_labels, full.class_names,
    )


# the federation of the last experiment this process served, by its cache file: a long-lived
# ClientApp process (warm.py) answers every round's messages without reading the data again
_ready: dict[Path, Federation] = {}


def node_data(experiment: str, seed: int, client: int, data_dir: str | None, data_folder: str | None) -> Federation:
    """A federation holding only this node's client (index kept), built once per experiment and seed.

    Under Flower's own SuperExec every message gets a new ClientApp process, so the client's data is
    kept in the node's cache folder instead of being rebuilt from the dataset for every round; the
    long-lived process of warm.py also keeps it in memory."""
    key = hashlib.sha256(f"{experiment}|{seed}|{client}|{data_folder}".encode()).hexdigest()[:24]
    folder = cache_dir() / "flower-node"
    path = folder / f"client{client}-{key}.pt"
    if path in _ready:
        return _ready[path]
    if path.exists():
        saved = torch.load(path, weights_only=True)
        own = Client(client, saved["profile"], torch.arange(len(saved["train_labels"])), saved["test_images"],
                     saved["test_labels"])
        _ready.clear()
        _ready[path] = Federation(saved["dataset"], saved["source"], saved["num_classes"], saved["train_images"],
                                  saved["train_labels"], [own], saved["clean_test_images"], saved["clean_test_labels"],
                                  tuple(saved.get("class_names", ())))  # not in caches of older versions
        return _ready[path]
    own = build_own(Experiment.model_validate_json(experiment), seed, client, data_dir, data_folder)
    mine = own.clients[0]
    saved = {
        "dataset": own.dataset, "source": own.source, "num_classes": own.num_classes,
        "train_images": own.train_images, "train_labels": own.train_labels,
        "profile": mine.profile, "test_images": mine.test_images, "test_labels": mine.test_labels,
        "clean_test_images": own.clean_test_images, "clean_test_labels": own.clean_test_labels,
        "class_names": list(own.class_names),
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(saved, tmp))
    for old in sorted(folder.glob(f"client{client}-*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)[KEPT:]:
        old.unlink(missing_ok=True)
    return node_data(experiment, seed, client, data_dir, data_folder)


def node_experiment(text: str) -> Experiment:
    """The experiment the server sent; a model factory this node cannot import is named with the fix."""
    try:
        return Experiment.model_validate_json(text)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"this SuperNode cannot use the experiment: {problems}. A model = \"module:function\" or a "
                          "custom rule must be importable on every node: install its module there, or start the "
                          "SuperNode with it on PYTHONPATH (or in its working directory)") from None


def my_client(message: Message, context: Context) -> tuple[Experiment, int, Federation, Client]:
    config = message.content["config"]
    exp = node_experiment(config["experiment"])
    if "partition-id" not in context.node_config:
        raise ConfigError("this SuperNode has no partition-id; start it with --node-config 'partition-id=0'")
    pid = int(context.node_config["partition-id"])
    if not 0 <= pid < exp.n_clients:
        raise ConfigError(f"partition-id={pid}, but the experiment has clients 0..{exp.n_clients - 1}")
    data_dir = context.node_config.get("data-dir") or exp.data.dir
    folder = context.node_config.get("data-path") or context.node_config.get("data-folder") or None
    federation = node_data(config["experiment"], int(config["seed"]), pid, data_dir and str(data_dir),
                           folder and str(folder))
    return exp, int(config["seed"]), federation, federation.clients[0]


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Which client this node is and what its data looks like, so the server can build the model."""
    exp, _, federation, client = my_client(message, context)
    build_model(exp.model, federation.input_shape, federation.num_classes)  # a model factory that fails says so now
    started({})  # the process's start goes to its first message
    info = ConfigRecord({
        "partition-id": client.index, "num-examples": len(client.train_rows),
        "input-shape": list(federation.input_shape), "num-classes": federation.num_classes,
        # nodes with their own data number their classes in the sorted order of their own labels
        "class-names": "\n".join(federation.class_names),
    })
    return Message(RecordDict({"info": info}), reply_to=message)


def scores(model: torch.nn.Module, params, federation: Federation, client: Client) -> dict[str, float]:
    """The model on this client's own test data and on the clean test set."""
    own_acc, own_loss = evaluate(model, params, client.test_images, client.test_labels)
    clean_acc, clean_loss = evaluate(model, params, federation.clean_test_images, federation.clean_test_labels)
    return {"own-accuracy": own_acc.item(), "own-loss": own_loss.item(),
            "clean-accuracy": clean_acc.item(), "clean-loss": clean_loss.item()}


def trainer(exp: Experiment, seed: int, federation: Federation, client: Client, model: torch.nn.Module, round_: int,
            stream: int, ids: torch.Tensor) -> LocalTrain:
    """This client's training as the simulation's transport does it (engines/simulation.py): its
    minibatches from (seed, stream, round, client, copy), `epochs` overriding the recipe's."""
    how = recipe(exp)

    def train(start: Params, adjust: GradientAdjust | None = None, epochs: int | None = None,
              copy: int = 0) -> ClientUpdates:
        generator = client_generator(seed, stream, round_, client.index, *([copy] if copy else []))
        result = local_update(model, start, federation.train_images, federation.train_labels, [client.train_rows],
                              replace(how, local_epochs=epochs) if epochs else how, [generator], adjust)
        return ClientUpdates(ids, torch.tensor([float(len(client.train_rows))]), result.params, result.steps,
                             result.loss)

    return train


@dataclass(frozen=True)
class Kept:
    names: set[str]  # the model's parameters this client keeps to itself
    came_from: int  # the round its state was saved after (0: the strategy's initial one)


def node_strategy_state(message: Message, exp: Experiment, seed: int, client: Client, model: torch.nn.Module,
                        received: Params, upto: int):
    """The strategy (without client-level DP, which the server applies) and the one-client state its
    steps run on here: the server's model and shared entries, and this client's own entries (the
    newest at or before round `upto`, else the strategy's initial ones)."""
    config = message.content["config"]
    strategy = registry.build(exp.strategy, exp.setup, norm_state(model))
    store = node_state.store(config["experiment"], seed, client.index)
    node_state.entered(store, message.metadata.run_id, int(config["first-round"]))
    came_from, own = node_state.latest(store, upto)
    if own is None:
        own = personal.own_entries(strategy.init(initial_model(model, seed), 1).extra)
    state = ServerState(received, {**personal.read_shared(config["shared"]), **own})
    return strategy, store, state, came_from


def trained_on_node(message: Message, exp: Experiment, seed: int, federation: Federation, client: Client,
                    model: torch.nn.Module, received: Params) -> tuple[ClientUpdates, Kept]:
    """The strategy's `local` and `aggregate` on this client's state (engines/flower/personal.py):
    its own entries after the round are kept here, its trained shared model goes back."""
    config = message.content["config"]
    round_ = int(config["round"])
    strategy, store, state, came_from = node_strategy_state(message, exp, seed, client, model, received, round_ - 1)
    only = torch.tensor([0])  # the client's row in its one-client state
    trained = strategy.local(state, only, trainer(exp, seed, federation, client, model, round_, STREAM_BATCHES, only))
    after, _ = strategy.aggregate(state, trained)
    node_state.save(store, round_, personal.own_entries(after.extra), int(config["checkpoint-round"]))
    return trained, Kept(registry.personal(exp.strategy, received, norm_state(model)), came_from)


def scored_on_node(message: Message, exp: Experiment, seed: int, federation: Federation, client: Client,
                   model: torch.nn.Module, received: Params) -> tuple[Params, int]:
    """The model [1, ...] this client is scored with after round `round` (e.g. its head on the
    server's body, its fine-tuned copy), and the round its state came from."""
    round_ = int(message.content["config"]["round"])
    strategy, _, state, came_from = node_strategy_state(message, exp, seed, client, model, received, round_)
    only = torch.tensor([0])
    models = strategy.evaluate_with(state, only, trainer(exp, seed, federation, client, model, round_, STREAM_FINETUNE, only))
    return every_row(models), came_from


_served = [0]  # messages this process has answered: only the first one paid for its start


def timed(step: str, seconds: dict[str, float], began: float) -> None:
    seconds[f"seconds-{step}"] = time.perf_counter() - began


def started(seconds: dict[str, float]) -> dict[str, float]:
    """`seconds-start`: from this process's start to its first message (Python, imports), else 0."""
    first = time.time() - psutil.Process().create_time() if not _served[0] else 0.0
    _served[0] += 1
    return {"seconds-start": first, **seconds}


@app.train(mods=[node_mod])  # SecAgg+ rounds (deploy --secagg) go through Flower's secaggplus_mod
def train(message: Message, context: Context) -> Message:
    """Train from the received model; with `evaluate-round` in the config, score it first (the
    server's evaluation of the previous round, sent with this round's training)."""
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    exp, seed, federation, client = my_client(message, context)
    config = message.content["config"]
    round_ = int(config["round"])
    model = build_model(exp.model, federation.input_shape, federation.num_classes)
    start = from_record(message.content["arrays"])
    timed("data", seconds, began)
    metrics: dict[str, float] = {}
    if "evaluate-round" in config:
        began = time.perf_counter()
        metrics = scores(model, start, federation, client)
        timed("evaluate", seconds, began)
    began = time.perf_counter()
    if personal.stateful(exp.strategy):
        result, kept = trained_on_node(message, exp, seed, federation, client, model, start)
        metrics["state-round"] = kept.came_from
        result = replace(result, params={n: p for n, p in result.params.items() if n not in kept.names})
    else:
        ids = torch.tensor([client.index])
        train_here = trainer(exp, seed, federation, client, model, round_, STREAM_BATCHES, ids)
        # a strategy whose step runs here (FedProx) takes it as in the simulation, from a state that
        # holds only the received model; any other strategy's clients train plainly
        result = registry.build(exp.strategy, exp.setup).local(ServerState(start), ids, train_here) \
            if registry.spec(exp.strategy).on_node else train_here(start)
    timed("train", seconds, began)
    metrics.update({
        "partition-id": client.index, "num-examples": len(client.train_rows),
        "steps": result.steps.item(), "loss": result.loss.item(), **started(seconds),
    })
    return Message(RecordDict({"arrays": to_record(result.params), "metrics": MetricRecord(metrics)}), reply_to=message)


@app.evaluate()
def evaluate_model(message: Message, context: Context) -> Message:
    """The server's model (or the one a strategy whose clients keep state gives this client) on this
    client's own test data and on the clean test set."""
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    exp, seed, federation, client = my_client(message, context)
    model = build_model(exp.model, federation.input_shape, federation.num_classes)
    params = from_record(message.content["arrays"])
    timed("data", seconds, began)
    began = time.perf_counter()
    came_from = None
    if personal.stateful(exp.strategy):  # scored with the model the strategy gives this client here
        params, came_from = scored_on_node(message, exp, seed, federation, client, model, params)
    metrics = scores(model, params, federation, client)
    if came_from is not None:
        metrics["state-round"] = came_from
    timed("evaluate", seconds, began)
    metrics = MetricRecord({"partition-id": client.index, **metrics, **started(seconds)})
    return Message(RecordDict({"metrics": metrics}), reply_to=message)

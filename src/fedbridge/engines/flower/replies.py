"""What the server accepts from a client: a reply is checked against what it was asked for before
any of it is used, so one broken or malicious client cannot spoil the global model or the metrics."""

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import RecordDict

from fedbridge.errors import FedbridgeError


@dataclass(frozen=True)
class Expected:
    """What a valid reply holds: its arrays by name and shape (float32, all finite; None: no arrays
    expected) and its metrics by name and closed range (all finite)."""

    arrays: dict[str, tuple[int, ...]] | None
    metrics: dict[str, tuple[float, float]]


def reply_problem(content: RecordDict, expected: Expected) -> str | None:
    """Why a client's reply cannot be used, naming the array or metric, or None if it is fine."""
    if expected.arrays is not None:
        arrays = content.array_records.get("arrays")
        if arrays is None:
            return "it has no ArrayRecord 'arrays'"
        if missing := [n for n in expected.arrays if n not in arrays]:
            return f"array {missing[0]!r} is missing (expected {', '.join(expected.arrays)})"
        if extra := [n for n in arrays if n not in expected.arrays]:
            return f"array {extra[0]!r} is not a parameter of the model (expected {', '.join(expected.arrays)})"
        for name, shape in expected.arrays.items():
            array = arrays[name]
            if tuple(array.shape) != shape:
                return f"array {name!r} has shape {tuple(array.shape)}, expected {shape}"
            if array.dtype != "float32":
                return f"array {name!r} is {array.dtype}, expected float32"
            try:
                values = array.numpy()
            except Exception as e:  # noqa: BLE001 - the bytes come from the client; any decoding failure is its fault
                return f"array {name!r} cannot be decoded ({e})"
            if not np.isfinite(values).all():
                return f"array {name!r} has {int((~np.isfinite(values)).sum())} NaN or infinite values"
    metrics = content.metric_records.get("metrics")
    if metrics is None:
        return "it has no MetricRecord 'metrics'"
    for key, (low, high) in expected.metrics.items():
        value = metrics.get(key)
        if value is None:
            return f"metric {key!r} is missing"
        if isinstance(value, list) or not math.isfinite(value):
            return f"metric {key!r} = {value!r} is not a finite number"
        if not low <= value <= high:
            return f"metric {key!r} = {value!r}, expected {low:g}" if low == high else \
                f"metric {key!r} = {value!r} is outside [{low:g}, {high:g}]"
    return None


def train_expected(shapes: dict[str, tuple[int, ...]], client: int, examples: int) -> Expected:
    """A train reply: the model's parameters, and the sample count the client gave when it connected
    (it weights the client in the average, so a client must not be able to inflate it)."""
    return Expected(shapes, {"partition-id": (client, client), "num-examples": (examples, examples),
                             "steps": (0, math.inf), "loss": (0, math.inf)})


def evaluate_expected(client: int) -> Expected:
    return Expected(None, {"partition-id": (client, client), "own-accuracy": (0, 1), "own-loss": (0, math.inf),
                           "clean-accuracy": (0, 1), "clean-loss": (0, math.inf)})


def together(train: Expected, evaluate: Expected) -> Expected:
    """A reply to a message that evaluates a model and then trains from it: both replies' content."""
    return Expected(train.arrays, {**evaluate.metrics, **train.metrics})


def described(content: RecordDict, n: int) -> tuple[int, int, tuple[int, ...], int]:
    """A node's answer to `describe`: its partition id, training samples, input shape and classes."""
    info = content.config_records.get("info", {})
    try:
        client, examples = int(info["partition-id"]), int(info["num-examples"])
        shape, classes = tuple(int(d) for d in info["input-shape"]), int(info["num-classes"])
    except (TypeError, KeyError, ValueError) as e:
        raise FedbridgeError(f"a SuperNode described itself without a valid {e}; is it running fedbridge's "
                             "ClientApp (the same version as the server)?") from None
    # images [C, H, W] or a table's features [F]
    if not 0 <= client < n or examples < 1 or len(shape) not in (1, 3) or min(shape) < 1 or classes < 2:
        raise FedbridgeError(f"a SuperNode described itself as partition-id={client} with {examples} samples of "
                             f"shape {shape} in {classes} classes; expected partition-id 0..{n - 1} with some samples")
    return client, examples, shape, classes

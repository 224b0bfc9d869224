"""What a run directory's JSON holds: the lines of metrics.jsonl and a run's or a sweep's
summary.json. The readers (tables, reports, sweeps, resume) index these directly, so a file edited
or damaged by hand is caught here, by its shape, instead of as a KeyError deep in a report.
"""

from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict  # pydantic needs this TypedDict before Python 3.12


# the baselines' method names in records and summaries; every other method is a strategy's name
LOCAL, POOLED = "local", "pooled"

Seeds = Annotated[list[int], Field(min_length=1)]  # the tables caption "seed N" from the first
# a share of test images: never NaN (a test set is never empty), unlike a diverged loss
Accuracy = Annotated[float, Field(ge=0, le=1)]


class Record(TypedDict):
    """One line of metrics.jsonl: one client's model on one test set after one round."""

    seed: int
    method: str
    round: int
    client: int
    profile: str
    test_set: str  # "own", "clean" or "client:N"
    accuracy: Accuracy
    loss: float
    epsilon: NotRequired[float]  # [privacy]: the client's ε spent after this round (its method's, at δ)


class Diagnostic(TypedDict):
    """One line of diagnostics.jsonl: what a strategy reported about one client it aggregated in one
    round (e.g. its training loss, update norm, disagreement with the others)."""

    seed: int
    method: str
    round: int
    client: int
    scores: dict[str, float]


class Row(TypedDict):
    client: int
    client_name: NotRequired[str]  # a natural partition's holder
    profile: str
    method: str
    test_set: str
    accuracy_mean: Accuracy
    accuracy_std: Annotated[float, Field(ge=0)]
    n_seeds: Annotated[int, Field(ge=1)]


def row_columns(rows: list[dict]) -> list[str]:
    """The columns of summary.json's rows as a table, in the schema's order: client_name only where a
    natural partition named the clients."""
    return [k for k in Row.__annotations__ if k != "client_name" or any(k in r for r in rows)]


class Detection(TypedDict):
    auc_by_round: list[float | None]
    first: float | None
    last: float | None
    reliable_from: int | None


class Pair(TypedDict):
    """One seed's method: what summary.json's warnings (diverged, chance) name."""

    seed: int
    method: str


class PrivacySummary(TypedDict):
    """[privacy]'s outcome: ε at δ of the strategy (the largest over its clients), how it was accounted,
    and every private method's ε."""

    epsilon: float | None  # None where no ε was recorded (a sample-level run on Flower)
    delta: float
    noise_multiplier: float
    clip: float
    accountant: str
    level: str
    mode: str
    adaptive: bool
    sampling: str
    methods: dict[str, float | None]
    clients: dict[str, float]  # the strategy's ε per client ("1", "2", ...): sample level depends on its size
    not_released: str | None  # what the strategy keeps on the clients, outside ε


class RunSummary(TypedDict):
    name: str
    dataset: str
    data_source: str
    data_note: str | None
    seeds: Seeds
    rounds: int
    methods: list[str]
    strategy: str
    # null for a method whose training time was lost: summary.json rebuilt by --resume without a checkpoint
    seconds_per_method: dict[str, float | None]
    versions: dict[str, str]
    table: list[Row]
    # the next four are absent in runs made before they were recorded
    threads: NotRequired[int]
    detection: NotRequired[dict[str, dict[str, Detection]]]
    diverged: NotRequired[list[Pair]]
    chance: NotRequired[list[Pair]]
    engines: NotRequired[dict[str, str]]  # what trained each method; absent before runs could be deployed
    left_out: NotRequired[list[dict[str, Any]]]  # `fedbridge deploy` only
    # what the models take and give, so a saved model is rebuilt without the data; older runs lack them
    # [channels, height, width], or [features] for a table
    input_shape: NotRequired[Annotated[list[int], Field(min_length=1, max_length=3)]]
    num_classes: NotRequired[int]
    class_names: NotRequired[list[str]]  # class k's name; absent where the classes are only numbers
    common_test: NotRequired[bool]  # the "clean" test set is a common one held out of the user's data
    privacy: NotRequired[PrivacySummary]  # runs with a [privacy] table


class SweepRow(TypedDict):
    cell: dict[str, str]
    client: int
    profile: str
    strategy: str
    quantity: str  # "local", "federated" or "gain"
    mean: float
    std: float
    ci_low: float | None  # None for one seed
    ci_high: float | None
    n_seeds: int


class SweepSummary(TypedDict):
    name: str
    config: str
    overrides: list[str]
    grid: list[tuple[str, list[str]]]
    seeds: Seeds
    rounds: int
    dataset: str
    data_source: str
    table: list[SweepRow]


_RECORD, _DIAGNOSTIC = TypeAdapter(Record), TypeAdapter(Diagnostic)
_RUN, _SWEEP = TypeAdapter(RunSummary), TypeAdapter(SweepSummary)


def record_problem(line: str) -> str | None:
    """Why a line of metrics.jsonl is not a record, or None."""
    return _problem(_RECORD, line)


def diagnostic_problem(line: str) -> str | None:
    """Why a line of diagnostics.jsonl is not a diagnostic, or None."""
    return _problem(_DIAGNOSTIC, line)


def summary_problem(text: str, sweep: bool) -> str | None:
    """Why the text of a summary.json is not a run's (or with `sweep`, a sweep's) summary, or None."""
    return _problem(_SWEEP if sweep else _RUN, text)


def _problem(adapter: TypeAdapter, text: str) -> str | None:
    # strict, from the JSON text itself: a string is not a number and true is not 1, while a JSON
    # array still fills a tuple and NaN (a diverged loss) is still a number
    try:
        adapter.validate_json(text, strict=True)
    except ValidationError as e:
        first = e.errors()[0]
        return f"{'.'.join(map(str, first['loc'])) or 'the whole file'}: {first['msg']}"
    return None

"""The experiment a user describes in TOML, validated into typed objects before anything runs.

`load_experiment(path, overrides)` reads the file, applies `--set a.b=value` overrides and
validates; every problem becomes a ConfigError naming the key, the bad value and what is allowed.
"""

import reprlib
import stat
import tomllib
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedbridge import files, losses, models
from fedbridge.data import corrupt
from fedbridge.data.config import Data
from fedbridge.data.partitions import IID, Natural, Partition, Sizes
from fedbridge.errors import ConfigError
from fedbridge.privacy import budget
from fedbridge.privacy.config import Privacy, setting_problem
from fedbridge.schema import LOCAL, POOLED
from fedbridge.strategies import noise_screen, registry
from fedbridge.strategies.api import Setup
from fedbridge.strategies.fedavg import Config as FedAvg
from fedbridge.strategies.registry import StrategyConfig
from fedbridge.strict import MAX_BATCH_SIZE, MAX_CLIENTS, MAX_LOCAL_EPOCHS, MAX_ROUNDS, MAX_SEEDS, Strict

# a config is a page of TOML; anything larger is not one (and /dev/zero would be read forever)
MAX_CONFIG_BYTES = 2**20
# `name` is one folder name, runs/NAME-TIME: 100 characters, and 200 bytes for those that take
# several, leave room under the 255 bytes a file name may have for "-deploy-YYYYmmdd-HHMMSS-N"
MAX_NAME_CHARS, MAX_NAME_BYTES = 100, 200


class Profile(BaseModel):
    """A data-quality profile: a name from corrupt.PROFILES and its parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @model_validator(mode="after")
    def _known(self) -> "Profile":
        try:
            corrupt.check_profile(self.name, self.params)
        except ConfigError as e:
            raise ValueError(str(e)) from None  # so pydantic reports where in the config it is
        return self

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})" if args else self.name


class ClientGroup(Strict):
    count: int = Field(default=1, ge=1, le=MAX_CLIENTS)
    profile: Profile = Profile(name="clean")
    # partition "natural": the clients of this group by name; without it, the group counts the next
    # `count` clients the other groups do not name, in the sorted order of their names
    names: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _counted_by_names(cls, tree: Any) -> Any:
        if isinstance(tree, dict) and isinstance(tree.get("names"), list) and "count" not in tree:
            tree = {**tree, "count": len(tree["names"])}
        return tree

    @model_validator(mode="after")
    def _names_fit_count(self) -> "ClientGroup":
        if self.names is not None and len(self.names) != self.count:
            raise ValueError(f"names lists {len(self.names)} clients but count = {self.count}; leave count out")
        return self


class Train(Strict):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    batch_size: int = Field(gt=0, le=MAX_BATCH_SIZE)
    local_epochs: int = Field(default=1, ge=1, le=MAX_LOCAL_EPOCHS)
    rounds: int = Field(ge=1, le=MAX_ROUNDS)
    client_fraction: float = Field(default=1.0, gt=0, le=1)
    # "auto": a CUDA GPU where torch finds one; "cpu" by default, so a seed's results are the same
    # on every machine (a GPU's float rounding differs from the CPU's)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    # "ce", "gce", "sce", or a table with the loss's keys; None is "ce", left out of the resolved
    # config so that runs made before train.loss existed keep their fingerprint
    loss: losses.LossConfig | None = None

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_by_name(cls, value: Any) -> Any:
        return losses.by_name(value)


class Log(Strict):
    tensorboard: bool = False  # TensorBoard event files per client and test set (fedbridge.events)


class Eval(Strict):
    every: int = Field(default=1, ge=1)  # rounds between evaluations; the last round always counts
    cross_clients: bool = True  # final models on every other client's own test data
    # whose models are scored: every client's, the round's sampled ones', or a seeded subset of N
    # (the same N at every round), for federations too large to score whole every round
    clients: Literal["all", "sampled"] | int = "all"

    @field_validator("clients", mode="before")
    @classmethod
    def _clients(cls, value: Any) -> Any:
        # one message for the union, rather than pydantic's one per member
        if value in ("all", "sampled") or (type(value) is int and 1 <= value <= MAX_CLIENTS):
            return value
        raise ValueError(f'give "all", "sampled" or a number of clients from 1 to {MAX_CLIENTS:,}')


class Experiment(Strict):
    name: str = "experiment"
    seed: int = Field(default=0, ge=0)
    seeds: int = Field(default=1, ge=1, le=MAX_SEEDS)
    data: Data = Data()
    partition: Partition = IID(name="iid")
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    clients: list[ClientGroup] = Field(min_length=1)
    model: str = "mlp"  # a built-in (models.MODEL_NAMES) or "package.module:function"
    train: Train
    # validated, so the default is the config class with keep_local too (registry._with_keep_local)
    strategy: StrategyConfig = Field(default={"name": "fedavg"}, validate_default=True)
    # "fedavg": FedAvg beside another strategy (e.g. a personalized one), trained on the same federation
    baselines: list[Literal["local", "fedavg", "pooled"]] = ["local", "pooled"]
    eval: Eval = Eval()
    privacy: Privacy | None = None
    log: Log = Log()

    @property
    def n_clients(self) -> int:
        return sum(g.count for g in self.clients)

    @property
    def profiles(self) -> list[Profile]:
        """One profile per client, in client order."""
        return [g.profile for g in self.clients for _ in range(g.count)]

    @property
    def methods(self) -> list["Method"]:
        """What the study trains: local-only first, then FedAvg, the strategy, then pooled."""
        base = list(dict.fromkeys(self.baselines))
        before = [Method(LOCAL, Role.LOCAL)] if LOCAL in base else []
        if "fedavg" in base and self.strategy.name != "fedavg":
            before.append(Method("fedavg", Role.FEDERATED, FedAvg()))
        after = [Method(POOLED, Role.POOLED, FedAvg())] if POOLED in base else []
        return before + [Method(self.strategy.name, Role.FEDERATED, self.strategy)] + after

    def method(self, name: str) -> "Method":
        """The method of that name this experiment trains, or the strategy's baseline of that name
        (e.g. "local" in a study run without it)."""
        for m in self.methods:
            if m.name == name:
                return m
        if name not in (LOCAL, POOLED, "fedavg"):
            raise ConfigError(f"method {name!r} is not trained by this experiment; its methods: "
                              f"{', '.join(m.name for m in self.methods)}")
        role = {LOCAL: Role.LOCAL, POOLED: Role.POOLED}.get(name, Role.FEDERATED)
        return Method(name, role, None if role is Role.LOCAL else FedAvg())

    def private(self, method: "Method") -> bool:
        """Whether [privacy] covers the method: every federated one, and at sample level pooled training
        too (its model leaves the clients' data); a client's model trained alone never leaves it."""
        p = self.privacy
        return p is not None and (method.role is Role.FEDERATED or (method.role is Role.POOLED and p.level == "sample"))

    @property
    def setup(self) -> Setup:
        t = self.train
        k = clients_per_round(self.n_clients, t.client_fraction)
        return Setup(self.n_clients, k, t.client_fraction, t.optimizer, t.momentum, t.lr)

    @field_validator("model")
    @classmethod
    def _a_model(cls, name: str) -> str:
        return models.check_name(name)

    @field_validator("name")
    @classmethod
    def _one_file_name(cls, name: str) -> str:
        if problem := _file_name_problem(name):
            raise ValueError(f"{problem}; name is one folder name (runs/NAME-TIME), to write elsewhere use --out DIR")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> "Experiment":
        if self.n_clients > MAX_CLIENTS:
            raise ValueError(f"the clients groups add up to {self.n_clients:,} clients; at most {MAX_CLIENTS:,}")
        if isinstance(self.partition, Sizes) and len(self.partition.sizes) != self.n_clients:
            raise ValueError(
                f"partition.sizes has {len(self.partition.sizes)} entries but the clients groups "
                f"add up to {self.n_clients} clients; give one size per client"
            )
        named = [n for g in self.clients for n in g.names or []]
        if named and not isinstance(self.partition, Natural):
            raise ValueError('clients.N.names name the clients of partition.name = "natural"; remove them, or set it')
        if len(set(named)) < len(named):
            raise ValueError(f"clients.N.names name {next(n for n in named if named.count(n) > 1)!r} twice; name each once")
        self._strategy_fits_the_round()
        self._privacy_holds()
        return self

    @model_validator(mode="before")
    @classmethod
    def _fedavg_by_default(cls, tree: Any) -> Any:
        # a [strategy] table without a name keeps meaning FedAvg, as before strategies had parameters
        if isinstance(tree, dict) and isinstance(tree.get("strategy"), dict) and "name" not in tree["strategy"]:
            tree = {**tree, "strategy": {**tree["strategy"], "name": "fedavg"}}
        if isinstance(tree, dict) and (problem := noise_screen.refusal(tree.get("strategy"))):
            raise ValueError(problem)
        return tree

    def _strategy_fits_the_round(self) -> None:
        if problem := registry.check(self.strategy, self.setup):
            raise ValueError(problem)

    def _privacy_holds(self) -> None:
        if (p := self.privacy) and (problem := setting_problem(p, self.strategy.name) or budget.problem(
                p, self.n_clients, self.setup.clients_per_round, self.train.rounds)):
            raise ValueError(problem)


class Role(StrEnum):
    """What a method is in the before/after table."""

    LOCAL = "local"  # every client alone
    FEDERATED = "federated"  # a strategy over the clients
    POOLED = "pooled"  # one client holding everyone's data


@dataclass(frozen=True)
class Method:
    """One thing a study trains: its name in records and summaries, its role, and for a federated
    (or pooled) method the strategy's config."""

    name: str
    role: Role
    strategy: BaseModel | None = None


def _file_name_problem(name: str) -> str | None:
    """Why `name` cannot be one file name in any folder, or None."""
    if not name.strip():
        return "it is empty or blank"
    size = len(name.encode("utf-8", "surrogatepass"))
    if len(name) > MAX_NAME_CHARS or size > MAX_NAME_BYTES:
        return (f"it is {len(name):,} characters, {size:,} bytes as UTF-8; at most {MAX_NAME_CHARS} characters "
                f"and {MAX_NAME_BYTES} bytes")
    if "/" in name or "\\" in name or ".." in name:
        return "it holds a path separator or '..'"
    # Cc: NUL and the other control characters; Cs: a lone surrogate, which no file system can store
    if bad := next((c for c in name if unicodedata.category(c) in ("Cc", "Cs")), None):
        return f"it holds the control character {bad!r}"
    return None


def clients_per_round(n_clients: int, fraction: float) -> int:
    """max(1, round(C * K)) clients take part in each round (McMahan et al.)."""
    return max(1, round(fraction * n_clients))


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(
                    f"--set {dotted}: {'.'.join(keys[:i]) or 'the config'} is a list of {len(node)}; "
                    f"use an index from 0 to {len(node) - 1} instead of {key!r}"
                )
            key = int(key)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:i])} is a value, not a table")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=value' -> ('a.b', value); the value is read as TOML, else taken as a plain string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: write it as KEY=VALUE, e.g. --set train.rounds=5")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise ConfigError(f"--set {key.strip()}: the value is nested too deeply to be a config value") from None
    return key.strip(), value


def _union_names(union: Any) -> list[str]:
    """The `name`s that tell a tagged union's tables apart, in order."""
    return [name for table in get_args(get_args(union)[0]) for name in get_args(table.model_fields["name"].annotation)]


# what `partition.name` and `strategy.name` may be, for the message when one is missing or unknown
_NAMES = {"partition": _union_names(Partition), "strategy": _union_names(StrategyConfig)}

# a 5,000-character value is shown cut short, not printed whole into the message
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80


def _describe(error: dict) -> str:
    loc = [str(p) for p in error["loc"]]
    tag = None
    if loc[:1] in (["partition"], ["strategy"]) and len(loc) >= 2:
        tag = loc.pop(1)  # pydantic's union tag: partition.sizes.sizes -> partition.sizes
    elif loc[:2] == ["train", "loss"] and len(loc) >= 3:
        loc.pop(2)  # train.loss.gce.q -> train.loss.q
    msg = error["msg"].removeprefix("Value error, ")
    if not loc:
        return msg
    where = ".".join(loc)
    if error["type"] in ("union_tag_not_found", "union_tag_invalid") and where in _NAMES:
        allowed = f"choose one of {', '.join(_NAMES[where])} (README, 'Experiments')"
        if error["type"] == "union_tag_not_found":
            return f"{where}.name is missing; {allowed}"
        return f"{where}.name = {_SHORT.repr(error['input']['name'])} is unknown; {allowed}"
    if error["type"] == "extra_forbidden" and loc[0] == "strategy":
        return f"{where}: unknown key for strategy.name = {tag!r} (its keys are in README, 'Strategies')"
    if error["type"] == "extra_forbidden" and loc[0] == "partition":
        return f"{where}: unknown key for partition.name = {tag!r} (each partition's keys are in README, 'Experiments')"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key (check the spelling; see configs/ for the keys each table takes)"
    got = error.get("input")
    shown = "" if isinstance(got, dict) or error["type"] == "missing" else f" (got {_SHORT.repr(got)})"
    return f"{where}: {msg}{shown}"


def validate(tree: dict, origin: str = "config") -> Experiment:
    try:
        return Experiment.model_validate(tree)
    except ValidationError as e:
        lines = "\n".join(f"  - {_describe(err)}" for err in e.errors())
        raise ConfigError(f"{origin} is not valid:\n{lines}") from None


def _read_config(path: Path) -> str:
    """The text of `path`, if it is a regular file of a config's size: reading a FIFO would wait for
    a writer forever, and /dev/zero never ends."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"config file {path} is {files.kind(info.st_mode)}, not a file; give a TOML file (see configs/)")
    with path.open("rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)  # not st_size: /proc files say 0 and a file may grow
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB, which no config is; "
                          "give the experiment's TOML file (see configs/)")
    return data.decode()


def load_experiment(path: Path, overrides: list[str] = ()) -> tuple[Experiment, dict]:
    """The validated experiment and the resolved TOML tree it came from."""
    try:
        tree = tomllib.loads(_read_config(Path(path)))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; see configs/ for ready ones") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a config; see configs/") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    except ValueError as e:  # a path holding NUL, from the Python API
        raise ConfigError(f"config file {path!r} is not a path: {e}") from None
    for text in overrides:
        _set(tree, *parse_override(text))
    origin = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
    return validate(tree, origin=origin), tree

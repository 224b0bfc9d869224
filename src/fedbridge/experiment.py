"""The experiment a user describes in TOML, validated into typed objects before anything runs.

`load_experiment(path, overrides)` reads the file, applies `--set a.b=value` overrides and
validates; every problem becomes a ConfigError naming the key, the bad value and what is allowed.
"""

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedbridge.data import corrupt
from fedbridge.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Data(_Strict):
    name: Literal["mnist", "fashion-mnist", "digits"] = "mnist"
    dir: Path | None = None  # beats FEDBRIDGE_DATA
    # used only when `name` cannot be found: the study then runs on scikit-learn's digits and says so
    fallback: Literal["digits"] | None = None


class IID(_Strict):
    name: Literal["iid"]
    samples_per_client: int | None = Field(default=None, gt=0)


class Dirichlet(_Strict):
    name: Literal["dirichlet"]
    alpha: float = Field(gt=0)
    min_size: int = Field(default=10, ge=1)


class Shards(_Strict):
    name: Literal["shards"]
    shards_per_client: int = Field(default=2, ge=1)
    shard_size: int | None = Field(default=None, gt=0)


class Quantity(_Strict):
    name: Literal["quantity"]
    alpha: float = Field(gt=0)
    min_size: int = Field(default=10, ge=1)


class Sizes(_Strict):
    name: Literal["sizes"]
    sizes: list[Annotated[int, Field(gt=0)]]


Partition = Annotated[Union[IID, Dirichlet, Shards, Quantity, Sizes], Field(discriminator="name")]


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


class ClientGroup(_Strict):
    count: int = Field(default=1, ge=1)
    profile: Profile = Profile(name="clean")


class Train(_Strict):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    batch_size: int = Field(gt=0)
    local_epochs: int = Field(default=1, ge=1)
    rounds: int = Field(ge=1)
    client_fraction: float = Field(default=1.0, gt=0, le=1)


class StrategyConfig(_Strict):
    name: Literal["fedavg"] = "fedavg"


class Eval(_Strict):
    every: int = Field(default=1, ge=1)  # rounds between evaluations; the last round always counts
    cross_clients: bool = True  # final models on every other client's own test data


class Experiment(_Strict):
    name: str = "experiment"
    seed: int = Field(default=0, ge=0)
    seeds: int = Field(default=1, ge=1)
    data: Data = Data()
    partition: Partition = IID(name="iid")
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    clients: list[ClientGroup] = Field(min_length=1)
    model: Literal["mlp", "2nn", "cnn"] = "mlp"
    train: Train
    strategy: StrategyConfig = StrategyConfig()
    baselines: list[Literal["local", "pooled"]] = ["local", "pooled"]
    eval: Eval = Eval()

    @property
    def n_clients(self) -> int:
        return sum(g.count for g in self.clients)

    @property
    def profiles(self) -> list[Profile]:
        """One profile per client, in client order."""
        return [g.profile for g in self.clients for _ in range(g.count)]

    @property
    def methods(self) -> list[str]:
        """What the study trains: local-only first, then the strategy, then pooled."""
        base = list(dict.fromkeys(self.baselines))
        return [m for m in base if m == "local"] + [self.strategy.name] + [m for m in base if m == "pooled"]

    @model_validator(mode="after")
    def _consistent(self) -> "Experiment":
        if isinstance(self.partition, Sizes) and len(self.partition.sizes) != self.n_clients:
            raise ValueError(
                f"partition.sizes has {len(self.partition.sizes)} entries but the clients groups "
                f"add up to {self.n_clients} clients; give one size per client"
            )
        return self


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
    return key.strip(), value


def _describe(error: dict) -> str:
    loc = [str(p) for p in error["loc"]]
    if loc[:1] == ["partition"] and len(loc) > 2:
        del loc[1]  # pydantic's union tag: partition.sizes.sizes -> partition.sizes
    msg = error["msg"].removeprefix("Value error, ")
    if not loc:
        return msg
    where = ".".join(loc)
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key (check the spelling; see configs/ for the keys each table takes)"
    got = error.get("input")
    shown = "" if isinstance(got, dict) or error["type"] == "missing" else f" (got {got!r})"
    return f"{where}: {msg}{shown}"


def validate(tree: dict, origin: str = "config") -> Experiment:
    try:
        return Experiment.model_validate(tree)
    except ValidationError as e:
        lines = "\n".join(f"  - {_describe(err)}" for err in e.errors())
        raise ConfigError(f"{origin} is not valid:\n{lines}") from None


def load_experiment(path: Path, overrides: list[str] = ()) -> tuple[Experiment, dict]:
    """The validated experiment and the resolved TOML tree it came from."""
    try:
        tree = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; see configs/ for ready ones") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    for text in overrides:
        _set(tree, *parse_override(text))
    return validate(tree, origin=str(path)), tree

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
from fedbridge.strategies.robust import trimmed_count


# the engine computes in float32: a setting beyond its range becomes inf or 0 there (tau = 1e-46
# divides by zero, alpha = 1e39 multiplies by inf), and a run ends at chance with NaN losses.
# torch.finfo(torch.float32)'s max and tiny, written out so that reading a config needs no torch
FLOAT32_MAX, FLOAT32_TINY = 3.4028234663852886e38, 1.1754943508222875e-38


class _Strict(BaseModel):
    # inf passes every bound (lr > 0, mu >= 0, ...) and a run then ends at chance with NaN losses
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _within_float32(self) -> "_Strict":
        for key, value in self:
            if isinstance(value, float) and value and not FLOAT32_TINY <= abs(value) <= FLOAT32_MAX:
                raise ValueError(
                    f"{key} = {value:g} is beyond float32, in which training computes (magnitudes from "
                    f"{FLOAT32_TINY:.2g} to {FLOAT32_MAX:.2g}, or 0)"
                )
        return self


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


# Strategies, each with its own typed parameters (see README "Strategies" and fedbridge.strategies)
class FedAvg(_Strict):
    name: Literal["fedavg"] = "fedavg"


class FedAvgM(_Strict):
    name: Literal["fedavgm"]
    # server_lr / (1 - momentum) = 1: once momentum builds up, steps as long as FedAvg's (Hsu et al. 2019)
    server_lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)


class AdaptiveServer(_Strict):
    """FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021)."""

    name: Literal["fedadam", "fedyogi", "fedadagrad"]
    server_lr: float = Field(default=0.01, gt=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.99, ge=0, lt=1)
    tau: float = Field(default=1e-3, gt=0)


class FedProx(_Strict):
    name: Literal["fedprox"]
    mu: float = Field(default=0.01, ge=0)


class Scaffold(_Strict):
    name: Literal["scaffold"]
    server_lr: float = Field(default=1.0, gt=0)


class FedNova(_Strict):
    name: Literal["fednova"]


class Median(_Strict):
    name: Literal["median"]


class TrimmedMean(_Strict):
    name: Literal["trimmed_mean"]
    beta: float = Field(default=0.2, gt=0, lt=0.5)  # share trimmed at each end, per coordinate


class Krum(_Strict):
    name: Literal["krum"]
    byzantine: int = Field(default=1, ge=0)  # clients per round assumed bad (Krum's f)
    select: int = Field(default=1, ge=1)  # 1: Krum; more: Multi-Krum averages this many


class Clipping(_Strict):
    name: Literal["clipping"]
    max_norm: float | None = Field(default=None, gt=0)  # unset: the round's median update norm


class Quality(_Strict):
    name: Literal["quality"]
    alpha: float = Field(default=5.0, ge=0)  # weight n_k exp(-alpha * loss_k); 0 is FedAvg


class FineTune(_Strict):
    name: Literal["finetune"]
    epochs: int = Field(default=1, ge=1)


class Ditto(_Strict):
    name: Literal["ditto"]
    lam: float = Field(default=0.1, ge=0)  # Ditto's lambda: pull of the personal model to the global one


class FedPer(_Strict):
    name: Literal["fedper"]


class FedRep(_Strict):
    name: Literal["fedrep"]
    head_epochs: int = Field(default=1, ge=1)


StrategyConfig = Annotated[
    Union[FedAvg, FedAvgM, AdaptiveServer, FedProx, Scaffold, FedNova, Median, TrimmedMean, Krum,
          Clipping, Quality, FineTune, Ditto, FedPer, FedRep],
    Field(discriminator="name"),
]


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
    strategy: StrategyConfig = FedAvg()
    # "fedavg": FedAvg beside another strategy (e.g. a personalized one), trained on the same federation
    baselines: list[Literal["local", "fedavg", "pooled"]] = ["local", "pooled"]
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
        """What the study trains: local-only first, then FedAvg, the strategy, then pooled."""
        base = list(dict.fromkeys(self.baselines))
        before = [m for m in ("local", "fedavg") if m in base and m != self.strategy.name]
        return before + [self.strategy.name] + [m for m in base if m == "pooled"]

    @model_validator(mode="after")
    def _consistent(self) -> "Experiment":
        if isinstance(self.partition, Sizes) and len(self.partition.sizes) != self.n_clients:
            raise ValueError(
                f"partition.sizes has {len(self.partition.sizes)} entries but the clients groups "
                f"add up to {self.n_clients} clients; give one size per client"
            )
        self._strategy_fits_the_round()
        return self

    @model_validator(mode="before")
    @classmethod
    def _fedavg_by_default(cls, tree: Any) -> Any:
        # a [strategy] table without a name keeps meaning FedAvg, as before strategies had parameters
        if isinstance(tree, dict) and isinstance(tree.get("strategy"), dict) and "name" not in tree["strategy"]:
            tree = {**tree, "strategy": {**tree["strategy"], "name": "fedavg"}}
        return tree

    def _strategy_fits_the_round(self) -> None:
        s, k = self.strategy, clients_per_round(self.n_clients, self.train.client_fraction)
        per_round = f"a round has {k} clients ({self.n_clients} clients x train.client_fraction {self.train.client_fraction})"
        if isinstance(s, Krum) and k < 2 * s.byzantine + 3:
            raise ValueError(
                f"strategy.byzantine = {s.byzantine} but {per_round}; Krum needs at least "
                f"2 x byzantine + 3 = {2 * s.byzantine + 3}: lower strategy.byzantine or raise train.client_fraction"
            )
        if isinstance(s, Krum) and s.select > k - s.byzantine:
            raise ValueError(
                f"strategy.select = {s.select} but {per_round} and strategy.byzantine = {s.byzantine}; "
                f"Multi-Krum can select at most {k - s.byzantine}"
            )
        if isinstance(s, (Median, TrimmedMean, Krum, Clipping, Quality)) and k < 3:
            raise ValueError(
                f"strategy.name = {s.name!r} compares the clients of a round, but {per_round}; "
                f"it needs at least 3 (add clients or raise train.client_fraction)"
            )
        if isinstance(s, TrimmedMean) and trimmed_count(k, s.beta) == 0:
            raise ValueError(
                f"strategy.beta = {s.beta} trims nothing: {per_round} and floor(beta x {k}) = 0; "
                f"use strategy.beta >= {1 / k:.3g} or strategy.name = \"fedavg\""
            )
        t = self.train
        if isinstance(s, (Scaffold, FedNova)) and (t.optimizer != "sgd" or t.momentum):
            # SCAFFOLD's control variates (option II) and FedNova's normalisation divide by the local
            # steps of plain SGD; with Adam or momentum the update is no such sum of steps
            raise ValueError(
                f"strategy.name = {s.name!r} is written for plain SGD local steps, but train.optimizer = "
                f"{t.optimizer!r}, train.momentum = {t.momentum}; use train.optimizer = \"sgd\" with momentum 0"
            )


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
    return key.strip(), value


def _describe(error: dict) -> str:
    loc = [str(p) for p in error["loc"]]
    tag = None
    if loc[:1] in (["partition"], ["strategy"]) and len(loc) >= 2:
        tag = loc.pop(1)  # pydantic's union tag: partition.sizes.sizes -> partition.sizes
    msg = error["msg"].removeprefix("Value error, ")
    if not loc:
        return msg
    where = ".".join(loc)
    if error["type"] == "extra_forbidden" and loc[0] == "strategy":
        return f"{where}: unknown key for strategy.name = {tag!r} (its keys are in README, 'Strategies')"
    if error["type"] == "extra_forbidden" and loc[0] == "partition":
        return f"{where}: unknown key for partition.name = {tag!r} (each partition's keys are in README, 'Experiments')"
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
    origin = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
    return validate(tree, origin=origin), tree

"""Every strategy a config can name, assembled from the strategy modules' specs.

Adding a strategy: write its module (a `Config`, a `build`, a `SPEC`) and add it to SPECS.
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, create_model

from fedbridge.schema import LOCAL, POOLED
from fedbridge.strategies import (
    adaptive, afl, bulyan, clipping, custom, ditto, eagle, fedavg, fedavgm, fednoro, fednova, fedper, fedprox, fedrep,
    finetune, krum, median, noise_screen, qfedavg, quality, scaffold, trimmed_mean,
)
from fedbridge.optim import Params
from fedbridge.strategies.api import Setup, Strategy, StrategySpec, shares_everything
from fedbridge.strategies.keep_local import keep_local

SPECS: tuple[StrategySpec, ...] = (
    fedavg.SPEC, fedavgm.SPEC, adaptive.SPEC, fedprox.SPEC, scaffold.SPEC, fednova.SPEC, median.SPEC,
    trimmed_mean.SPEC, krum.SPEC, bulyan.SPEC, clipping.SPEC, quality.SPEC, qfedavg.SPEC, afl.SPEC, eagle.SPEC,
    fednoro.SPEC, finetune.SPEC, ditto.SPEC, fedper.SPEC, fedrep.SPEC, custom.SPEC,
)

_BY_NAME = {name: spec for spec in SPECS for name in spec.titles}
NAMES = tuple(_BY_NAME)  # every `strategy.name` a config may give, in SPECS order



def _with_keep_local(config: type[BaseModel]) -> type[BaseModel]:
    """The strategy's own keys and `keep_local`, which every strategy takes (strategies/keep_local.py)."""
    return create_model(config.__name__, __base__=config, __module__=config.__module__,
                        keep_local=(list[Literal["bn"]], []))


# the config's `strategy` table: one of the specs' classes, told apart by `name`
StrategyConfig = Annotated[Union[tuple(_with_keep_local(spec.config) for spec in SPECS)], Field(discriminator="name")]

# the baselines beside the strategies in tables ("local" and "pooled" are not strategies)
BASELINE_TITLES = {LOCAL: "alone", POOLED: "pooled"}


def plain(name: str) -> BaseModel:
    """The config of strategy `name` with its defaults, as a config file's `strategy` table gives it."""
    return TypeAdapter(StrategyConfig).validate_python({"name": name})


def spec(config: Any) -> StrategySpec:
    found = _BY_NAME[config.name]
    return noise_screen.screened_spec(found) if getattr(config, "noise_screen", None) else found


Wrap = Callable[[Strategy], Strategy]


def build(config: Any, setup: Setup, norm: set[str] | None = None, deployed: Wrap | None = None,
          private: Wrap | None = None) -> Strategy:
    """The strategy as it runs, built in the one place every engine builds it, its wrappers applied
    in this order (innermost first), so each sees what the ones inside it do:
    1. the strategy's own `build`;
    2. FedNS (`strategy.noise_screen`): it reweights the strategy's own aggregation;
    3. FedBN (`strategy.keep_local`): the model's normalisation entries `norm` (models.norm_state)
       stay with each client around everything inside, so neither the screen nor the strategy
       sees them move;
    4. `deployed`: on Flower, the seam where the SuperNodes take over each client's steps
       (engines/flower/personal.py), so everything inside runs on the nodes as in the simulation;
    5. `private`: client-level DP-FedAvg (rounds.schedule), outermost, as it clips and noises the
       update a client releases after everything the client does."""
    strategy = _BY_NAME[config.name].build(config, setup)
    if getattr(config, "noise_screen", None):
        strategy = noise_screen.screened(strategy, config.noise_screen)
    if kept_local(config):
        if norm is None:
            raise TypeError(f"strategy.keep_local = {kept_local(config)} needs the model's normalisation entries (norm)")
        strategy = keep_local(strategy, norm)
    if deployed is not None:
        strategy = deployed(strategy)
    return private(strategy) if private is not None else strategy


def personal(config: Any, params: Params, norm: set[str]) -> set[str]:
    """The model's parameters each client keeps to itself (FedPer's head, FedBN's normalisation
    layers): deployed, they never leave its node."""
    return _BY_NAME[config.name].personal(params) | (set(norm) if kept_local(config) else set())


def keeps_parameters(config: Any) -> bool:
    """Whether `personal` names any parameter, whatever the model."""
    return _BY_NAME[config.name].personal is not shares_everything or bool(kept_local(config))


def kept_local(config: Any) -> list[str]:
    """What `strategy.keep_local` keeps out of aggregation ([] for a strategy built in code, e.g. a baseline)."""
    return list(getattr(config, "keep_local", []))


def check(config: Any, setup: Setup) -> str | None:
    return spec(config).check(config, setup)


def title(method: str) -> str:
    """How tables and reports name a method; an unknown one (a run from a later version) by its name."""
    if method in BASELINE_TITLES:
        return BASELINE_TITLES[method]
    return _BY_NAME[method].titles[method] if method in _BY_NAME else method

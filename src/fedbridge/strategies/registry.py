"""Every strategy a config can name, assembled from the strategy modules' specs.

Adding a strategy: write its module (a `Config`, a `build`, a `SPEC`) and add it to SPECS.
"""

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, create_model

from fedbridge.schema import LOCAL, POOLED
from fedbridge.strategies import (
    adaptive, afl, bulyan, clipping, custom, ditto, eagle, fedavg, fedavgm, fednoro, fednova, fedper, fedprox, fedrep,
    finetune, krum, median, noise_screen, qfedavg, quality, scaffold, trimmed_mean,
)
from fedbridge.strategies.api import Setup, Strategy, StrategySpec

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


def build(config: Any, setup: Setup) -> Strategy:
    return spec(config).build(config, setup)


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

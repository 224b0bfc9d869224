"""Your own way of combining client models, named in the config as "package.module:object":

- `rule = "mymod:avg"`: `avg(updates, weights)` gets the round's client updates {name: [K, ...]}
  (each client's trained parameters minus the global model) and their sample counts [K], and
  returns one update {name: [1, ...]}, which the server adds to the global model;
- `strategy = "mymod:mine"`: a whole Strategy (fedbridge.strategies.api), or a function of no
  arguments that returns one, for a strategy with its own state, local step or evaluation.

The object is imported while the config is validated, so one that cannot be found stops the run
before anything is written (exit 2); a rule that fails or returns a wrong update stops it at that
round (exit 1). docs/strategies.md shows both kinds.
"""

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import ValidationInfo, field_validator, model_validator

from fedbridge.errors import FedbridgeError
from fedbridge.imports import resolve
from fedbridge.optim import Params
from fedbridge.strategies.api import ClientUpdates, Setup, Strategy, StrategySpec
from fedbridge.strategies.fedavg import global_strategy
from fedbridge.strict import Strict

ONE_OF = ('give exactly one of strategy.rule = "package.module:function" (an aggregation rule) or '
          'strategy.strategy = "package.module:object" (a whole Strategy); see docs/strategies.md')


class Config(Strict):
    name: Literal["custom"]
    rule: str | None = None  # "package.module:function"
    strategy: str | None = None  # "package.module:object"

    @field_validator("rule", "strategy")
    @classmethod
    def _importable(cls, text: str | None, info: ValidationInfo) -> str | None:
        if text is not None:
            (rule_of if info.field_name == "rule" else strategy_of)(text)
        return text

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, table: Any) -> Any:
        # before the fields: with both given, importing either is beside the point
        if isinstance(table, dict):
            given = [key for key in ("rule", "strategy") if table.get(key) is not None]
            if len(given) != 1:
                raise ValueError(("strategy.rule and strategy.strategy are both set; " if given else "") + ONE_OF)
        return table


def rule_of(text: str) -> Callable[[Params, torch.Tensor], Any]:
    rule = resolve(text, "function")
    if not callable(rule):
        raise ValueError(f"{text} is of type {type(rule).__name__}, not a function of (updates, weights)")
    return rule


def strategy_of(text: str) -> Strategy:
    found = resolve(text, "object")
    if isinstance(found, Strategy):
        return found
    if not callable(found):
        raise ValueError(f"{text} is of type {type(found).__name__}, neither a fedbridge.strategies.api.Strategy "
                         "nor a function of no arguments returning one")
    try:
        made = found()
    except Exception as e:  # the user's code
        raise ValueError(f"{text}() raised {type(e).__name__}: {e}") from None
    if not isinstance(made, Strategy):
        raise ValueError(f"{text}() returned an object of type {type(made).__name__}, not a fedbridge.strategies.api.Strategy")
    return made


def checked(text: str, update: Any, updates: Params) -> Params:
    """The rule's update, if it is one: the updates' names, each a finite float tensor [1, *shape],
    in the updates' dtype (a float64 update would silently turn the global model into float64)."""
    said = f"strategy.rule {text} returned"
    if not isinstance(update, dict):
        raise FedbridgeError(f"{said} an object of type {type(update).__name__}, expected a dict {{name: tensor [1, ...]}} "
                             "with the names of the updates")
    if set(update) != set(updates):
        missing, unknown = sorted(set(updates) - set(update), key=str), sorted(set(update) - set(updates), key=str)
        raise FedbridgeError(f"{said} the names {sorted(update, key=str)}, expected those of the updates, "
                             f"{list(updates)}" + (f"; missing {missing}" if missing else "")
                             + (f"; not in the model {unknown}" if unknown else ""))
    out = {}
    for name, x in updates.items():
        got, expected = update[name], [1, *x.shape[1:]]
        if not isinstance(got, torch.Tensor):
            raise FedbridgeError(f"{said} {name!r} of type {type(got).__name__}, expected a torch.Tensor of shape {expected}")
        if list(got.shape) != expected:
            raise FedbridgeError(f"{said} {name!r} of shape {list(got.shape)}, expected {expected}")
        if not got.is_floating_point():
            raise FedbridgeError(f"{said} {name!r} of dtype {got.dtype}, expected a float tensor")
        for what, count in (("NaN", got.isnan().sum()), ("Inf", got.isinf().sum())):
            if count:
                diverged = not all(u.isfinite().all() for u in updates.values())
                raise FedbridgeError(f"{said} {name!r} with {int(count)} {what} values" + (
                    " (the clients' updates hold non-finite values too: local training diverged; lower train.lr)"
                    if diverged else ""))
        out[name] = got.detach().to(x.dtype)
    return out


def rule_strategy(text: str) -> Strategy:
    """FedAvg's shape with the rule `text` in place of the weighted mean."""
    rule = rule_of(text)

    def combine(updates: Params, weights: torch.Tensor, trained: ClientUpdates) -> Params:
        try:
            update = rule(dict(updates), weights)  # a copy of the dict: a rule that pops a name breaks nothing
        except Exception as e:  # the user's code; its traceback stays on the error for a Python caller
            raise FedbridgeError(f"strategy.rule {text} raised {type(e).__name__}: {e}") from e
        return checked(text, update, updates)

    return global_strategy(combine=combine)


def build(config: Config, setup: Setup) -> Strategy:
    return rule_strategy(config.rule) if config.rule is not None else strategy_of(config.strategy)


# flower: a rule is server-side; a whole strategy that asks for client steps is refused by the
# Flower transport when it asks (ConfigError), as nothing can tell beforehand what its `local` does
SPEC = StrategySpec(Config, build, {"custom": "custom"})

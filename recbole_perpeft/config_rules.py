"""What a valid config is: each key's rule (from :data:`recbole_perpeft.config_schema.SCHEMA`) and
the combinations of keys that only work together, checked when a ``Config`` is built.

:class:`recbole_perpeft.config.Config` checks the values the user gave (``--config_files`` and
``--KEY=VALUE``) before it looks up the model, the dataset or anything else, and the final
values (property files included) once they are merged. A bad value ends the run at once with
one line (:class:`~recbole_perpeft.errors.ConfigError`; exit code 2 from the CLI)::

    invalid configuration: peft_type must be one of lora, ia3, peft, iisan, none; got 'nonsense'

To check a new key, give its :class:`~recbole_perpeft.config_schema.Key` in the schema a kind;
``models`` limits it to those models (a key such as ``loss_type`` means different things to
different models). Keys without a rule are passed through unchecked, as RecBole does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from recbole_perpeft.config_schema import PEFT_TYPES, SCHEMA, Check
from recbole_perpeft.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """``key`` is valid when ``check(value)`` holds; ``expected`` says so in words."""

    key: str
    check: Check
    expected: str
    models: tuple[str, ...] = ()  # empty: every model

    def applies_to(self, model: str) -> bool:
        return not self.models or model in self.models


#: One rule per checked key of the schema, in the schema's order.
RULES: tuple[Rule, ...] = tuple(
    Rule(key.name, key.kind.check, key.kind.expected, key.models) for key in SCHEMA if key.kind is not None
)


def check_values(values: Mapping[str, Any], model: str, rules: Iterable[Rule] = RULES) -> None:
    """Raise a one-line :class:`ConfigError` for the first value in ``values`` a rule refuses."""
    for rule in rules:
        if rule.key in values and rule.applies_to(model) and not rule.check(values[rule.key]):
            raise ConfigError(
                f"invalid configuration: {rule.key} must be {rule.expected}; got {values[rule.key]!r}"
            )


# ------------------------------------------------------------------------------ combinations
@cache
def topk_metric_names() -> frozenset[str]:
    """RecBole's top-k metrics (lower case): those with a per-user value at every cut-off."""
    from recbole.evaluator import metrics
    from recbole.evaluator.base_metric import TopkMetric

    return frozenset(
        name.lower() for name, value in vars(metrics).items()
        if isinstance(value, type) and issubclass(value, TopkMetric) and value is not TopkMetric
    )


def is_topk_metric(metric: Any) -> bool:
    """``NDCG@20``, ``hit@10``, ...: a top-k metric at a cut-off of 1 or more."""
    if not isinstance(metric, str):
        return False
    name, at, k = metric.lower().partition("@")
    return bool(at) and k.isdigit() and int(k) >= 1 and name in topk_metric_names()


def group_selection_needs_topk_metric(values: Mapping[str, Any], model: str) -> str | None:
    """``model_selection: group`` with groups scores every user on ``valid_metric``: a top-k one."""
    if model != "PerPEFT" or values.get("model_selection") != "group":
        return None
    n_groups = values.get("n_groups")
    if not isinstance(n_groups, int) or n_groups <= 1 or is_topk_metric(values.get("valid_metric")):
        return None
    return (f"model_selection: group (with n_groups > 1) needs a top-k valid_metric such as NDCG@20; "
            f"got {values.get('valid_metric')!r} (use a top-k metric or model_selection: stage)")


#: Each returns the problem (one line) or ``None``; given the final values and the model's name.
COMBINATIONS: tuple[Callable[[Mapping[str, Any], str], str | None], ...] = (
    group_selection_needs_topk_metric,
)


def check_combinations(values: Mapping[str, Any], model: str) -> None:
    """Raise a one-line :class:`ConfigError` for the first combination of final values that cannot work."""
    for combination in COMBINATIONS:
        problem = combination(values, model)
        if problem:
            raise ConfigError(f"invalid configuration: {problem}")


__all__ = ["COMBINATIONS", "PEFT_TYPES", "RULES", "Rule", "check_combinations", "check_values", "is_topk_metric"]

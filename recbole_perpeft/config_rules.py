"""What a valid config value is, key by key: one table, checked when a ``Config`` is built.

:class:`recbole_perpeft.config.Config` checks the values the user gave (``--config_files`` and
``--KEY=VALUE``) before it looks up the model, the dataset or anything else, and the final
values (property files included) once they are merged. A bad value ends the run at once with
one line (:class:`~recbole_perpeft.errors.ConfigError`; exit code 2 from the CLI)::

    invalid configuration: peft_type must be one of lora, ia3, peft, iisan, none; got 'nonsense'

To check a new key, add a :class:`Rule` to :data:`RULES`; ``models`` limits it to those models
(a key such as ``loss_type`` means different things to different models). Keys without a rule
are passed through unchecked, as RecBole does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from recbole_perpeft.errors import ConfigError

Check = Callable[[Any], bool]

#: The PEFT backends (recbole_perpeft.peft_backends.PEFT_TYPES; kept here so that a bad value
#: fails before the model, and with it transformers, is imported).
PEFT_TYPES = ("lora", "ia3", "peft", "iisan", "none")


@dataclass(frozen=True)
class Rule:
    """``key`` is valid when ``check(value)`` holds; ``expected`` says so in words."""

    key: str
    check: Check
    expected: str
    models: tuple[str, ...] = ()  # empty: every model

    def applies_to(self, model: str) -> bool:
        return not self.models or model in self.models


# --------------------------------------------------------------------- what a value may be
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int) -> tuple[Check, str]:
    return (lambda value: _is_int(value) and value >= minimum), f"an integer >= {minimum}"


def positive_number() -> tuple[Check, str]:
    return (lambda value: _is_number(value) and value > 0), "a number > 0"


def number() -> tuple[Check, str]:
    return _is_number, "a finite number"


def boolean() -> tuple[Check, str]:
    return (lambda value: isinstance(value, bool)), "True or False"


def one_of(*choices: str, any_case: bool = False) -> tuple[Check, str]:
    def check(value: Any) -> bool:
        return isinstance(value, str) and (value.lower() if any_case else value) in choices

    return check, "one of " + ", ".join(choices)


def text() -> tuple[Check, str]:
    return (lambda value: isinstance(value, str) and bool(value.strip())), "a non-empty string"


def mapping() -> tuple[Check, str]:
    return (lambda value: isinstance(value, Mapping)), "a mapping"


def precision() -> tuple[Check, str]:
    # YAML (and the CLI) read an unquoted `no` as False; ~ means auto.
    check, expected = one_of("auto", "bf16", "fp16", "no", any_case=True)
    return (lambda value: value is None or value is False or check(value)), expected


def or_none(kind: tuple[Check, str]) -> tuple[Check, str]:
    check, expected = kind
    return (lambda value: value is None or check(value)), f"{expected} or ~ (none)"


# ---------------------------------------------------------------------------------- the table
PERPEFT = ("PerPEFT",)

RULES: tuple[Rule, ...] = (
    # every model
    Rule("epochs", *integer(1)),
    Rule("train_batch_size", *integer(1)),
    Rule("eval_batch_size", *integer(1)),
    Rule("learning_rate", *positive_number()),
    Rule("nproc", *integer(1)),
    Rule("mixed_precision", *precision()),  # recbole_perpeft.precision
    # PerPEFT (properties/model/PerPEFT.yaml)
    Rule("foundation_model", *text(), models=PERPEFT),
    Rule("peft_type", *one_of(*PEFT_TYPES, any_case=True), models=PERPEFT),
    Rule("peft_config", *or_none(mapping()), models=PERPEFT),
    Rule("content_weight", *number(), models=PERPEFT),
    Rule("cache_dir", *or_none(text()), models=PERPEFT),
    Rule("max_image_pixels", *integer(1), models=PERPEFT),  # the pixel cap of recbole_perpeft.data.images
    Rule("encode_batch_size", *integer(1), models=PERPEFT),
    Rule("recipe", *text(), models=PERPEFT),  # the name is looked up in properties/recipe/
    Rule("learn_content_weight", *boolean(), models=PERPEFT),
    Rule("scale_item_inputs", *boolean(), models=PERPEFT),
    Rule("loss_type", *one_of("BCE", "CE", "sampled_softmax"), models=PERPEFT),
    Rule("num_negatives", *integer(1), models=PERPEFT),
    Rule("train_unit", *one_of("user", "window", "prefix"), models=PERPEFT),
    Rule("n_groups", *integer(1), models=PERPEFT),
    Rule("warmup_epochs", *integer(0), models=PERPEFT),
    Rule("group_negatives", *boolean(), models=PERPEFT),
    Rule("regroup_every", *or_none(integer(0)), models=PERPEFT),
    Rule("batch_mode", *one_of("group", "mixed"), models=PERPEFT),
    Rule("grouping_sequence", *one_of("train", "train_valid"), models=PERPEFT),
    Rule("min_group_size", *or_none(integer(1)), models=PERPEFT),
    Rule("grouping_truth", *or_none(text()), models=PERPEFT),
    Rule("model_selection", *one_of("group", "stage"), models=PERPEFT),
)


def check_values(values: Mapping[str, Any], model: str, rules: Iterable[Rule] = RULES) -> None:
    """Raise a one-line :class:`ConfigError` for the first value in ``values`` a rule refuses."""
    for rule in rules:
        if rule.key in values and rule.applies_to(model) and not rule.check(values[rule.key]):
            raise ConfigError(
                f"invalid configuration: {rule.key} must be {rule.expected}; got {values[rule.key]!r}"
            )


__all__ = ["PEFT_TYPES", "RULES", "Rule", "check_values"]

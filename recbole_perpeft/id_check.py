"""Never worse than the IDs alone: the ID-only check of a content run (``id_fallback``).

Item content does not help every dataset: on some, the same SASRec backbone over item IDs alone
validates better than any content model. With ``id_fallback: True`` (the default recipe), a
PerPEFT run that uses content also trains that ID-only backbone (the content run's settings
with ``n_groups: 1``, ``peft_type: none``, ``content_weight: 0``, trained with
``id_fallback_config`` on top: the ``global, ID only`` row of ``benchmarks/accuracy.py``) and
serves whichever of the two has the better best validation score. The choice is made on
validation only; the test split is evaluated once, on the model served. Both runs are seeded
alike, so the content run is the same with or without the check.

Why the twin trains its own way (``id_fallback_config``, by default RecBole's SASRec learning
rate 1e-3 and 20 validations of patience): the content model's small learning rate and
short patience protect its adapters and save time on large data, but they stop an ID-only
backbone early where validation is noisy (few users), and the fallback is only worth having if
it is as strong as the ID baseline a user would otherwise run.
"""

from __future__ import annotations

from typing import Any

from recbole_perpeft.config import Config
from recbole_perpeft.errors import ConfigError
from recbole_perpeft.run import build_config

#: What turns a content run into its ID-only twin.
ID_ONLY_SETTINGS: dict[str, Any] = {
    "n_groups": 1,
    "peft_type": "none",
    "content_weight": 0.0,
    "learn_content_weight": False,
    "id_fallback": False,
}


def uses_content(config: Config) -> bool:
    """Whether item content reaches the item representations at all."""
    return float(config["content_weight"] or 0.0) != 0.0 or bool(config["learn_content_weight"])


def id_check_applies(config: Config) -> bool:
    """Whether the run trains the ID-only twin and serves the better of the two on validation."""
    return config["model"] == "PerPEFT" and bool(config["id_fallback"]) and uses_content(config)


def twin_settings(config: Config) -> dict[str, Any]:
    """What the twin changes in ``config``: ``id_fallback_config``, then :data:`ID_ONLY_SETTINGS`."""
    training = dict(config["id_fallback_config"] or {})
    clash = sorted(set(training) & set(ID_ONLY_SETTINGS))
    if clash:
        raise ConfigError(f"id_fallback_config may not set {', '.join(clash)}: the ID-only twin is defined by "
                          f"{', '.join(f'{key}: {value}' for key, value in ID_ONLY_SETTINGS.items())}")
    return {**training, **ID_ONLY_SETTINGS}


def id_only_config(config: Config) -> Config:
    """The ID-only twin of ``config``: the user's settings with :func:`twin_settings` on top."""
    settings = twin_settings(config)
    try:
        return build_config(config["model"], config["dataset"], None, {**config.external_config_dict, **settings})
    except ConfigError as error:
        raise ConfigError(f"id_fallback_config: {error}") from error


def choose(content_score: float, id_only_score: float) -> str:
    """``"id_only"`` where the IDs alone validate strictly better, else ``"content"``."""
    return "id_only" if id_only_score > content_score else "content"


def check_line(metric: str, content_score: float, id_only_score: float, served: str) -> str:
    """The one log line that says what the check found and what is served."""
    what = ("the content model" if served == "content"
            else "the ID-only backbone (item content did not help this dataset on validation)")
    return (f"ID-only check: best validation {metric} {content_score:.4f} with item content, "
            f"{id_only_score:.4f} with item IDs alone: serving {what}")


__all__ = ["ID_ONLY_SETTINGS", "check_line", "choose", "id_check_applies", "id_only_config", "twin_settings",
           "uses_content"]

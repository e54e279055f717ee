"""The config keys anyone reads, and a warning (with the closest known key) for any other.

RecBole accepts every key and ignores the ones nothing reads, so ``--n_group=2`` (for
``n_groups``) would silently run with the default. Known keys are those of every property file
(RecBole's, for all its models and datasets, and this plugin's), the plugin's config schema
(:data:`recbole_perpeft.config_schema.SCHEMA`), RecBole's argument lists, and the few keys
RecBole's code reads without a property file default (:data:`READ_WITHOUT_DEFAULT`).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import yaml

from recbole_perpeft.config_schema import KEYS as SCHEMA_KEYS

# Read by RecBole's models and trainers, or by this plugin, with no default in any property file.
READ_WITHOUT_DEFAULT = frozenset({
    "encoding", "eta", "norm", "sim", "tail_ratio", "token_num_threshold", "use_filter",
    "xgb_early_stopping_rounds", "has_residual", "feature_num", "cin", "contrast", "verbose",
    "dist_backend", "local_rank", "device", "single_spec", "model", "dataset", "MODEL_TYPE",
    "MODEL_INPUT_TYPE", "eval_type", "valid_neg_sample_args", "test_neg_sample_args",
    # set at run time by RecBole's mask transform (BERT4Rec); a saved run config carries them
    "MASK_INDEX", "MASK_ITEM_SEQ", "POS_ITEMS", "NEG_ITEMS",
})
# Families of keys RecBole reads by prefix (``alias_of_user_id``, ...).
_KNOWN_PREFIXES = ("alias_of_",)


class UnknownConfigKeyWarning(UserWarning):
    """A config key that nothing reads (the message names the closest known key)."""


def _yaml_keys(folder: Path) -> set[str]:
    keys: set[str] = set()
    for file in sorted(folder.rglob("*.yaml")):
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(loaded, dict):
            keys.update(str(key) for key in loaded)
    return keys


@cache
def known_config_keys(plugin_properties: Path) -> frozenset[str]:
    """Every key a RecBole or plugin component reads (``plugin_properties``: the plugin's folder)."""
    import recbole
    from recbole.utils import argument_list

    keys = _yaml_keys(Path(recbole.__file__).resolve().parent / "properties") | _yaml_keys(plugin_properties)
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys.update(getattr(argument_list, name))
    return frozenset(keys | READ_WITHOUT_DEFAULT | set(SCHEMA_KEYS))


def closest_known_key(key: str, known: frozenset[str]) -> str | None:
    """The known key ``key`` was most likely meant to be (case first, then spelling), or ``None``."""
    by_case = {k.lower(): k for k in known}
    if key.lower() in by_case:
        return by_case[key.lower()]
    matches = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return matches[0] if matches else None


def unknown_keys(keys: Iterable[str], known: frozenset[str]) -> list[str]:
    """The keys of ``keys`` nothing reads, in their order."""
    return [key for key in keys if key not in known and not key.startswith(_KNOWN_PREFIXES)]


def warn_unknown_keys(keys: Iterable[str], plugin_properties: Path) -> list[str]:
    """Warn (:class:`UnknownConfigKeyWarning`) once per key nothing reads; returns those keys."""
    known = known_config_keys(Path(plugin_properties))
    found = unknown_keys(keys, known)
    for key in found:
        closest = closest_known_key(key, known)
        hint = f"did you mean '{closest}'? " if closest else ""
        warnings.warn(
            f"unknown config key '{key}' is ignored ({hint}no RecBole or plugin component reads it)",
            UnknownConfigKeyWarning,
            stacklevel=3,
        )
    return found

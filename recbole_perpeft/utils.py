"""Model and trainer lookup: the plugin first, then RecBole's own models."""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from pathlib import Path

from recbole.utils import ModelType

from recbole_perpeft.errors import UnknownModelError

_RECBOLE_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)
# Models whose modules import optional libraries (lightgbm, xgboost) at import time.
_RECBOLE_EXLIB = {"lightgbm": "lightgbm", "xgboost": "xgboost"}


@cache
def plugin_models() -> dict[str, type]:
    """The models this plugin adds, by class name."""
    from recbole_perpeft.model import PLUGIN_MODELS

    return {model_class.__name__: model_class for model_class in PLUGIN_MODELS}


@cache
def recbole_model_names() -> dict[str, tuple[str, str]]:
    """RecBole's models: lower-case name -> (module path, class name), importing none of them.

    Importing ``recbole.model.exlib_recommender`` imports lightgbm and xgboost, so the model
    files are listed and read as text instead.
    """
    spec = importlib.util.find_spec("recbole.model")
    assert spec is not None and spec.submodule_search_locations
    model_root = Path(next(iter(spec.submodule_search_locations)))
    names: dict[str, tuple[str, str]] = {}
    for submodule in (*_RECBOLE_SUBMODULES, "exlib_recommender"):
        for file in sorted((model_root / submodule).glob("*.py")):
            class_name = _class_name_in(file)
            if class_name:
                names[file.stem] = (f"recbole.model.{submodule}.{file.stem}", class_name)
    return names


def available_models() -> list[str]:
    """Every model name the CLI accepts (plugin models first)."""
    return list(plugin_models()) + sorted(name for _, name in recbole_model_names().values())


def _class_name_in(file: Path) -> str:
    # RecBole's model files are named after their class, lower-cased.
    with open(file, encoding="utf-8") as source:
        for line in source:
            if line.startswith("class "):
                name = line[len("class "):].split("(")[0].split(":")[0].strip()
                if name.lower() == file.stem:
                    return name
    return ""


def get_model(model_name: str) -> type:
    """The model class called ``model_name``: the plugin's, else RecBole's.

    Raises :class:`UnknownModelError` (with the list of valid names) instead of the
    ``ModuleNotFoundError: lightgbm`` RecBole gives for an unknown name.
    """
    if model_name in plugin_models():
        return plugin_models()[model_name]
    found = recbole_model_names().get(model_name.lower())
    if found is None:
        raise UnknownModelError(
            f"unknown model '{model_name}'. Available models: {', '.join(available_models())}"
        )
    optional_library = _RECBOLE_EXLIB.get(model_name.lower())
    if optional_library and importlib.util.find_spec(optional_library) is None:
        raise UnknownModelError(
            f"model '{model_name}' needs the optional library '{optional_library}' "
            f"(pip install {optional_library})"
        )
    module_path, class_name = found
    return getattr(importlib.import_module(module_path), class_name)


def get_trainer(model_type: ModelType, model_name: str) -> type:
    """The trainer for a model: the plugin's ``<Model>Trainer``, else RecBole's choice.

    Either way the class is made checkpoint-safe (weights-only, unique names, timings).
    """
    from recbole.utils import get_trainer as recbole_get_trainer

    from recbole_perpeft import trainer as plugin_trainer
    from recbole_perpeft.trainer.safe import make_safe

    plugin_class = getattr(plugin_trainer, f"{model_name}Trainer", None)
    if plugin_class is not None:
        return plugin_class
    return make_safe(recbole_get_trainer(model_type, model_name))

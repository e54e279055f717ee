"""Model and trainer lookup: the plugin first, then RecBole's own models."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from functools import lru_cache

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


@lru_cache(maxsize=None)
def plugin_models() -> dict[str, type]:
    """The models this plugin adds, by class name."""
    from recbole_perpeft import model as plugin_model_package

    return {
        name: getattr(plugin_model_package, name)
        for name in getattr(plugin_model_package, "__all__", [])
    }


@lru_cache(maxsize=None)
def recbole_model_names() -> dict[str, str]:
    """RecBole's model names (lower-case module name -> module path), without importing them."""
    import recbole.model

    names: dict[str, str] = {}
    for submodule in _RECBOLE_SUBMODULES:
        package = importlib.import_module(f"recbole.model.{submodule}")
        for info in pkgutil.iter_modules(package.__path__):
            names[info.name] = f"recbole.model.{submodule}.{info.name}"
    for name in _RECBOLE_EXLIB:
        names[name] = f"recbole.model.exlib_recommender.{name}"
    del recbole.model
    return names


def available_models() -> list[str]:
    """Every model name the CLI accepts (plugin models first)."""
    recbole_names = []
    for module_path in recbole_model_names().values():
        recbole_names.append(_class_name_in(module_path))
    return list(plugin_models()) + sorted(n for n in recbole_names if n)


def _class_name_in(module_path: str) -> str:
    # RecBole's module files are the lower-cased class names; recover the class spelling
    # from the module's source without importing it (imports can pull optional libraries).
    spec = importlib.util.find_spec(module_path)
    if spec is None or spec.origin is None:
        return ""
    wanted = module_path.rsplit(".", 1)[1]
    with open(spec.origin, encoding="utf-8") as source:
        for line in source:
            if line.startswith("class "):
                name = line[len("class "):].split("(")[0].split(":")[0].strip()
                if name.lower() == wanted:
                    return name
    return ""


def get_model(model_name: str) -> type:
    """The model class called ``model_name``: the plugin's, else RecBole's.

    Raises :class:`UnknownModelError` (with the list of valid names) instead of the
    ``ModuleNotFoundError: lightgbm`` RecBole gives for an unknown name.
    """
    if model_name in plugin_models():
        return plugin_models()[model_name]
    module_path = recbole_model_names().get(model_name.lower())
    if module_path is None:
        raise UnknownModelError(
            f"unknown model '{model_name}'. Available models: {', '.join(available_models())}"
        )
    optional_library = _RECBOLE_EXLIB.get(model_name.lower())
    if optional_library and importlib.util.find_spec(optional_library) is None:
        raise UnknownModelError(
            f"model '{model_name}' needs the optional library '{optional_library}' "
            f"(pip install {optional_library})"
        )
    module = importlib.import_module(module_path)
    for attribute in dir(module):
        if attribute.lower() == model_name.lower() and isinstance(getattr(module, attribute), type):
            return getattr(module, attribute)
    raise UnknownModelError(f"module {module_path} defines no model class '{model_name}'")


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

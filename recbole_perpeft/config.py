"""The plugin's ``Config``: RecBole's, plus the plugin's properties and model lookup.

Priority, lowest first: RecBole's own property files < ``properties/overall.yaml`` <
``properties/model/<Model>.yaml`` < ``properties/dataset/<dataset>.yaml`` < ``--config_files``
< ``config_dict`` (the CLI's ``--key=value``). Values are checked against
:mod:`recbole_perpeft.config_rules` as the config is built. Unlike RecBole, this ``Config`` never reads
``sys.argv`` itself (the CLI parses it), so it behaves the same under pytest and Ray Tune, and
it parses values with a safe YAML loader instead of ``eval``.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_perpeft.compat import restore_numpy_aliases
from recbole_perpeft.config_keys import warn_unknown_keys
from recbole_perpeft.config_rules import check_combinations, check_values
from recbole_perpeft.data.registry import resolve_dataset_dir
from recbole_perpeft.errors import ConfigError
from recbole_perpeft.utils import get_model

_FLOAT_PATTERN = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class ConfigLoader(yaml.SafeLoader):
    """A safe YAML loader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_PATTERN, list("-+0123456789."))


def parse_value(text: str) -> Any:
    """Parse one ``--key=value`` value: YAML scalars, lists and dicts; anything else stays text."""
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError:
        return text


def check_config_file(path: str | Path) -> None:
    """Refuse (one line naming the file and line) a config file that is not a YAML mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.load(handle, Loader=ConfigLoader)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        context, opened = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and opened is not None and (mark is None or opened.line != mark.line):
            problem += f"; {context} opened at line {opened.line + 1}"
        raise ConfigError(f"{where}: invalid YAML ({problem})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file holds KEY: VALUE lines, not a {type(loaded).__name__}")


def properties_dir() -> Path:
    """The plugin's ``properties/`` folder, in a source checkout or an installed wheel."""
    checkout = Path(__file__).resolve().parent.parent / "properties"
    if (checkout / "overall.yaml").is_file():
        return checkout
    installed = Path(str(resources.files("recbole_perpeft") / "properties"))
    if (installed / "overall.yaml").is_file():
        return installed
    raise FileNotFoundError(
        f"recbole_perpeft's properties folder is missing (looked in {checkout} and {installed})"
    )


def recipe_file(name: str) -> Path:
    """``properties/recipe/<name>.yaml``: a named training recipe (e.g. ``paper``, the reference's
    exact training). Its values override the model's and the dataset's defaults; config files
    and ``--key=value`` still override it."""
    folder = properties_dir() / "recipe"
    path = folder / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        known = ["default", *sorted(p.stem for p in folder.glob("*.yaml"))]
        raise ConfigError(f"unknown recipe '{name}'; known recipes: {', '.join(known)}")
    return path


class Config(RecBoleConfig):
    """RecBole's ``Config`` with the plugin's models and property files (see module docstring)."""

    def __init__(
        self,
        model: str | type | None = None,
        dataset: str | None = None,
        config_file_list: list[str] | None = None,
        config_dict: dict[str, Any] | None = None,
    ) -> None:
        restore_numpy_aliases()
        super().__init__(model, dataset, config_file_list, config_dict)
        warn_unknown_keys(self.external_config_dict, properties_dir())  # RecBole ignores them silently

    def _build_yaml_loader(self):
        return ConfigLoader

    def _convert_config_dict(self, config_dict):
        return {
            key: parse_value(value) if isinstance(value, str) else value
            for key, value in config_dict.items()
        }

    def _load_cmd_line(self):
        return {}

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
        if model is None or dataset is None:
            raise KeyError("both 'model' and 'dataset' must be given")
        # The user's values first, before the model (and with it transformers) is even imported
        # and before any data is looked at: a typo fails at once.
        check_values(self.external_config_dict, model if isinstance(model, str) else model.__name__)
        if isinstance(model, str):
            return model, get_model(model), dataset
        return model.__name__, model, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        # RecBole's generic default loads users and items only; ordering by time (the paper's
        # leave-one-out) needs the timestamp. Datasets with their own load_col keep theirs.
        if self.internal_config_dict.get("load_col") == {"inter": ["user_id", "item_id"]}:
            self.internal_config_dict["load_col"] = {"inter": ["user_id", "item_id", "timestamp"]}
        root = properties_dir()
        for file in (
            root / "overall.yaml",
            root / "model" / f"{model}.yaml",
            root / "dataset" / f"{dataset}.yaml",
        ):
            if file.is_file():
                loaded = self._update_internal_config_dict(file) or {}
                if file.parent.name == "dataset":
                    self.parameters["Dataset"] += [
                        key for key in loaded if key not in self.parameters["Dataset"]
                    ]
        recipe = self.external_config_dict.get("recipe", self.internal_config_dict.get("recipe"))
        if recipe not in (None, "default"):
            self._update_internal_config_dict(recipe_file(recipe))

    def _init_device(self):
        # RecBole's distributed branch hard-codes the ``nccl`` backend and a CUDA device, so
        # ``nproc > 1`` cannot run on a CPU machine. Pick the backend from the device instead:
        # ``nccl`` on CUDA, ``gloo`` on CPU (see recbole_perpeft.distributed).
        final = self.final_config_dict
        if "local_rank" not in final:
            super()._init_device()
            return
        from recbole_perpeft.distributed import init_distributed_device

        init_distributed_device(final)

    def _set_default_parameters(self):
        check_values(self.final_config_dict, self.model)  # the property files' values too
        check_combinations(self.final_config_dict, self.model)
        # RecBole's own default negative sampling contradicts ``loss_type: CE`` for sequential
        # models (SASRec's default), so `--model=SASRec` would not start; drop the default
        # unless the user asked for sampling explicitly.
        final = self.final_config_dict
        if (
            final.get("loss_type") == "CE"
            and final.get("MODEL_TYPE") == ModelType.SEQUENTIAL
            and "train_neg_sample_args" not in self.external_config_dict
        ):
            final["train_neg_sample_args"] = None
        by_peft = final.get("weight_decay_by_peft") or {}
        if final.get("peft_type") in by_peft and "weight_decay" not in self.external_config_dict:
            final["weight_decay"] = by_peft[final["peft_type"]]
        base_data_path = final.get("data_path")
        super()._set_default_parameters()
        # Embedded datasets (ml-100k from RecBole's wheel, mmdemo generated on first use),
        # converted ones under data_path, and a clear error for anything else.
        final["data_path"] = str(resolve_dataset_dir(self.dataset, base_data_path))
        if str(final.get("foundation_model")).lower() == "auto":
            final["foundation_model"] = default_foundation_model(Path(final["data_path"]), self.dataset, final)


def default_foundation_model(dataset_dir: Path, dataset: str, final: dict[str, Any]) -> str:
    """The model ``foundation_model: auto`` stands for: CLIP where items have images, else a text model.

    Resolved here, once, so the run's config (and every checkpoint's copy of it) names the model.
    """
    from recbole_perpeft.data.content import item_file_has_images
    from recbole_perpeft.encoders.factory import choose_foundation_model

    # Decided by the images themselves, not by the column: the converter's --no-images output has
    # an image column that is empty for every item, and CLIP would then be fetched for nothing.
    image_field = final.get("IMAGE_FIELD")
    images_root = dataset_dir / (final.get("image_dir") or "images")
    has_images = bool(image_field) and item_file_has_images(dataset_dir / f"{dataset}.item", image_field,
                                                             images_root)
    return choose_foundation_model(has_images)


class ConfigDumper(yaml.SafeDumper):
    """Writes what :class:`ConfigLoader` reads back unchanged (``"1e-4"`` stays a string)."""


ConfigDumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_PATTERN, list("-+0123456789."))


def dump_config_yaml(settings: dict[str, Any], path: str | Path) -> None:
    """Write settings as a config file that reloads to the very same values.

    (Given as ``config_dict`` instead, every string would be parsed as YAML once more: the
    tab of ``field_separator`` would come back as ``None``.)
    """
    Path(path).write_text(
        yaml.dump(settings, Dumper=ConfigDumper, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )

"""Build a run, once, for every caller: config -> seeded dataset -> loaders -> model -> trainer.

Training (:mod:`recbole_perpeft.quick_start`), the search's test of its best trial
(:mod:`recbole_perpeft.tune`), recommendations from a checkpoint
(:mod:`recbole_perpeft.recommend`) and the benchmarks all call :func:`build_run`, so they build
the very same model from the same settings:

1. the data are split with ``seed``;
2. the model is built on the *training* split's dataset, after re-seeding with
   ``seed + local_rank`` (under DDP each rank draws its own dropout masks and negatives, and the
   weights are made equal by DDP's broadcast from rank 0);
3. the trainer, when asked for, is the plugin's ``<Model>Trainer`` or RecBole's made
   checkpoint-safe (:func:`recbole_perpeft.utils.get_trainer`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from logging import getLogger
from typing import Any

import torch
from recbole.data import data_preparation
from recbole.utils import ModelType, init_seed

from recbole_perpeft.config import Config, check_config_file
from recbole_perpeft.data.atomic_files import build_dataset
from recbole_perpeft.data.sequential import PluginSequentialDataset
from recbole_perpeft.distributed import unsharded_loaders
from recbole_perpeft.errors import ConfigError, PerPEFTError
from recbole_perpeft.model.protocol import dataset_class_of
from recbole_perpeft.utils import get_model, get_trainer

_DEFAULT_DATASET_CLASS = {
    ModelType.GENERAL: "Dataset",
    ModelType.SEQUENTIAL: "SequentialDataset",
    ModelType.CONTEXT: "Dataset",
    ModelType.KNOWLEDGE: "KnowledgeBasedDataset",
    ModelType.TRADITIONAL: "Dataset",
    ModelType.DECISIONTREE: "Dataset",
}


def build_config(
    model: str,
    dataset: str,
    config_file_list: list[str] | None = None,
    config_dict: dict[str, Any] | None = None,
) -> Config:
    """The run's ``Config``; bad values and RecBole's own refusals become one-line :class:`ConfigError`."""
    for file in config_file_list or []:
        check_config_file(file)
    try:
        return Config(model, dataset, config_file_list, config_dict)
    except PerPEFTError:
        raise
    except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as error:
        raise ConfigError(f"invalid configuration: {error}") from error


def seed_everything(seed: int, reproducibility: bool) -> None:
    """RecBole's seeding, plus deterministic kernels when ``reproducibility`` is on.

    Without the latter, multi-threaded CPU kernels (e.g. the scatter-adds of embedding and
    indexing backward passes) sum in varying order, and two same-seed runs drift apart in the
    last bits of the loss.
    """
    init_seed(seed, reproducibility)
    torch.use_deterministic_algorithms(reproducibility, warn_only=True)


def create_dataset(config: Config):
    """The dataset object for ``config['model']``, built without RecBole's pickle cache.

    (RecBole's ``create_dataset`` unpickles ``saved/<dataset>-<class>.pth`` when present,
    which executes whatever that file holds.)
    """
    model_class = get_model(config["model"])
    dataset_class = dataset_class_of(model_class)
    if dataset_class is None:
        recbole_datasets = importlib.import_module("recbole.data.dataset")
        specific = getattr(recbole_datasets, f"{config['model']}Dataset", None)
        if specific is not None:
            dataset_class = specific
        elif config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            dataset_class = PluginSequentialDataset
        else:
            dataset_class = getattr(recbole_datasets, _DEFAULT_DATASET_CLASS[config["MODEL_TYPE"]])
    return build_dataset(dataset_class, config)


def check_topk(config: Config, dataset: Any) -> None:
    """Refuse a ``topk`` above the catalogue under full ranking, before the model is loaded.

    (RecBole would stop at the first validation with ``RuntimeError: selected index k out of range``.)
    """
    modes = (config["eval_args"] or {}).get("mode")
    modes = modes.values() if isinstance(modes, dict) else [modes]
    n_items = dataset.item_num - 1
    largest = max(config["topk"] or [0])
    if any(str(mode).lower() == "full" for mode in modes) and largest > n_items:
        raise ConfigError(f"topk {largest} is more than the {n_items} items of dataset '{config['dataset']}': "
                          f"lower --topk (e.g. --topk=\"[{min(10, n_items)}]\")")


def build_model(config: Config, dataset: Any) -> torch.nn.Module:
    """The model ``config`` names over ``dataset`` (the training split's, or the whole dataset to
    serve a checkpoint), on ``config['device']``; seeded per DDP rank, so each rank draws its own
    dropout masks and negatives."""
    seed_everything(config["seed"] + config["local_rank"], config["reproducibility"])
    return get_model(config["model"])(config, dataset).to(config["device"])


@dataclass
class Run:
    """Everything :func:`build_run` built; ``trainer`` is ``None`` when not asked for."""

    config: Config
    dataset: Any
    train_data: Any
    valid_data: Any
    test_data: Any
    model: torch.nn.Module
    trainer: Any
    #: Counted before the split: a sequential dataset's ``build()`` replaces its interactions by
    #: the training rows.
    dataset_stats: dict[str, int]


def build_run(config: Config, *, dataset: Any = None, with_trainer: bool = True) -> Run:
    """Build the run ``config`` describes (see the module docstring).

    ``dataset``: a dataset object already built for the same data settings (e.g. shared by a
    search's trials); the split then follows this ``config``.
    """
    logger = getLogger()
    seed_everything(config["seed"], config["reproducibility"])
    if dataset is None:
        dataset = create_dataset(config)
    else:
        dataset.config = config
    logger.info(dataset)
    check_topk(config, dataset)
    stats = {"users": dataset.user_num - 1, "items": dataset.item_num - 1, "interactions": dataset.inter_num}
    with unsharded_loaders(config):  # under DDP, batches are split by rows in the trainer
        train_data, valid_data, test_data = data_preparation(config, dataset)

    model = build_model(config, train_data._dataset)
    logger.info(model)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model) if with_trainer else None
    return Run(config, dataset, train_data, valid_data, test_data, model, trainer, stats)


__all__ = ["Run", "build_config", "build_model", "build_run", "create_dataset", "seed_everything"]

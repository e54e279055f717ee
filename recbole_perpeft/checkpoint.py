"""Checkpoints: what a saved run holds, how it is named, written and read, and how it is exported.

A checkpoint is one ``torch.save`` file of tensors and builtins only, loaded with
``torch.load(..., weights_only=True)``: no pickled code from a checkpoint is ever executed
(RecBole pickles its whole ``Config`` instead, which PyTorch >= 2.6 refuses to load).

=====================  =====================================================================
key                    what it holds
=====================  =====================================================================
``format``             :data:`CHECKPOINT_FORMAT`
``model``              the model's class name
``epoch``              the last completed epoch; ``cur_step``, ``best_valid_score`` (progress)
``state_dict``         the model's weights and buffers; ``other_parameter`` (RecBole's extras)
``optimizer``          the optimiser's state
``rng``                every random state training draws from (:func:`rng_states`)
``run_config``         the run's model, dataset and final settings (:func:`run_config_of`)
=====================  =====================================================================

A resume file (``<best checkpoint>.last.pth``, written after every epoch) adds the trainer's
bookkeeping: ``best_checkpoint``, ``best_valid_result``, ``train_loss``, ``train_epoch_seconds``,
``valid_seconds``, ``valid_scores``, ``extra`` (a trainer subclass's state) and
``rng["train_loader"]``.

What identifies a run (which settings and data make two runs "the same run") is
``run_config["identity"]``: model, dataset, a fingerprint of the settings that shape model and
data, and fingerprints of the item and user vocabularies (:mod:`recbole_perpeft.run_identity`,
which also picks the file ``--resume`` continues and refuses weights trained on other item ids).

:func:`export_model` writes a trained model in the ecosystem's own formats (peft adapter folders,
safetensors, plain text tables) for use without this plugin.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pickle
import random
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recbole_perpeft.atomic_write import atomic_open
from recbole_perpeft.cache import staged_folder
from recbole_perpeft.errors import CheckpointError, ConfigError, StorageError, storage_cause
from recbole_perpeft.model.protocol import is_grouped
from recbole_perpeft.run_identity import RESUME_SUFFIX, check_vocabulary

CHECKPOINT_FORMAT = 1
EXPORT_FORMAT = 1


# --------------------------------------------------------------------------------------- names
def unique_checkpoint_name(model_name: str) -> str:
    """A checkpoint file name that two runs started in the same second never share.

    (RecBole names checkpoints by the second only: parallel trials overwrite each other.)
    """
    from recbole.utils import get_local_time

    return f"{model_name}-{get_local_time()}-{os.getpid()}-{secrets.token_hex(3)}.pth"


def resume_file_of(checkpoint_file: str | os.PathLike) -> str:
    """The resume file that goes with a best-model checkpoint file."""
    return str(checkpoint_file)[: -len(".pth")] + RESUME_SUFFIX


# ------------------------------------------------------------------------------ writing, reading
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` so a crash never leaves a truncated file under that name.

    The file gets the usual permissions (0644 under umask 022; see recbole_perpeft.atomic_write).
    Full disk (quota, read-only mount): the temporary file is removed and a one-line
    :class:`StorageError` names the file (``torch.save`` itself reports it as a ``RuntimeError``
    from deep inside its zip writer).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb", fsync=True) as handle:
            torch.save(obj, handle)
    except (OSError, RuntimeError) as error:
        cause = storage_cause(error)
        if cause is None:
            raise
        raise StorageError(f"cannot write checkpoint {path}: {cause.strerror or cause} "
                           f"(free space there or choose another --checkpoint_dir)") from error


def remove_stale_temporaries(*paths: str | os.PathLike) -> list[Path]:
    """Remove the hidden temporary files (``.NAME.<random>.tmp``) of the checkpoints ``paths``.

    Only for files of a run whose writer is gone (a resumed run): a live writer's temporary file
    would vanish under it. Returns what was removed.
    """
    removed = []
    for path in {Path(p) for p in paths}:
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
                removed.append(stale)
    return removed


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", *, model_name: str | None = None
) -> dict[str, Any]:
    """A checkpoint's contents, loaded weights-only; every failure is a one-line :class:`CheckpointError`.

    With ``model_name``, a checkpoint of another model is refused too.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file (a saved/<...>.pth file)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path} is not a weights-only checkpoint (it holds objects other than tensors and builtins, "
            f"which are never unpickled here): {first_line}"
        ) from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a checkpoint): {first_line}") \
            from error
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a model checkpoint of this plugin (no 'state_dict')")
    saved_model = state.get("model")
    if model_name is not None and saved_model and str(saved_model).lower() != model_name.lower():
        raise CheckpointError(f"{path} holds model '{saved_model}', not '{model_name}'")
    return state


def apply_weights(model: nn.Module, checkpoint: dict[str, Any], checkpoint_file: str | os.PathLike,
                  dataset: Any = None) -> None:
    """Load a checkpoint's weights into ``model``: the one place weights are applied.

    With ``dataset`` (the run's data), a checkpoint trained on other item ids (and, for a grouped
    model, other user ids) is refused first. Weights that do not fit the model are a one-line
    :class:`CheckpointError`.
    """
    if dataset is not None:
        check_vocabulary(checkpoint_file, checkpoint, dataset, users=is_grouped(model))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"the weights of {checkpoint_file} do not fit the rebuilt {type(model).__name__} (are the settings "
            f"those of the training run?): {detail}"
        ) from error
    model.load_other_parameter(checkpoint.get("other_parameter"))


def model_checkpoint(
    config, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, cur_step: int, best_valid_score: float,
    identity: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The checkpoint of a model after ``epoch`` (see the module docstring for its keys).

    ``identity`` (recbole_perpeft.run_identity.run_identity) goes into ``run_config["identity"]``.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "model": config["model"],
        "epoch": int(epoch),
        "cur_step": int(cur_step),
        "best_valid_score": float(best_valid_score),
        "state_dict": model.state_dict(),
        "other_parameter": model.other_parameter(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_states(),
        "run_config": {**run_config_of(config), **({"identity": dict(identity)} if identity else {})},
    }


# ----------------------------------------------------------------------------------- run config
_NOT_PLAIN = object()

# Keys Config derives on every build. Given back as settings they would contradict it:
# ``local_rank`` starts DDP, a processed ``*_neg_sample_args`` clashes with the CE loss check.
_DERIVED_KEYS = frozenset({
    "model", "dataset", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "local_rank",
    "single_spec", "dist_backend", "valid_metric_bigger", "valid_neg_sample_args",
    "test_neg_sample_args", "eval_neg_sample_args",
})


def _plain(value: Any) -> Any:
    """``value`` as plain builtins (JSON-like), or ``_NOT_PLAIN``.

    NumPy scalars become Python ones: ``np.float64`` passes ``isinstance(x, float)`` but a
    weights-only load refuses it.
    """
    if value is None or isinstance(value, bool):
        return None if value is None else bool(value)
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items) else items
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return _NOT_PLAIN
        entries = {str(k): _plain(v) for k, v in value.items()}
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in entries.values()) else entries
    return _NOT_PLAIN


def run_config_of(config) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its run: model, dataset and the run's final settings.

    Every key of the final config is kept (defaults included, so a later change of a property
    file cannot change the rebuilt model), as plain builtins so the checkpoint still loads
    weights-only; keys Config derives itself (device, DDP rank, processed sampling arguments)
    are left out. ``data_path`` is stored absolute, so the checkpoint works from any working
    directory. Reload with :func:`recbole_perpeft.recommend.Recommender.from_checkpoint`.
    """
    settings: dict[str, Any] = {}
    for key, value in config.final_config_dict.items():
        plain = _NOT_PLAIN if key in _DERIVED_KEYS else _plain(value)
        if plain is not _NOT_PLAIN:
            settings[key] = plain
    negatives = settings.get("train_neg_sample_args")
    if isinstance(negatives, dict) and negatives.get("distribution") == "none":
        settings["train_neg_sample_args"] = None  # what the user wrote: no sampling
    settings["data_path"] = str(Path(config["data_path"]).resolve().parent)
    return {"model": config["model"], "dataset": config["dataset"], "settings": settings}


# ------------------------------------------------------------------------------- random states
def _numpy_rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    np.random.set_state(
        (state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"])
    )


def rng_states() -> dict[str, Any]:
    """Every random state a training run draws from, as weights-only-loadable values."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_rng_state(),
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured."""
    torch.set_rng_state(states["torch"])
    _set_numpy_rng_state(states["numpy"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# -------------------------------------------------------------------------------------- export
def check_export_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a path, refused (one-line :class:`ConfigError`) when it already exists."""
    path = Path(out_dir)
    if path.exists():
        raise ConfigError(f"export folder {path} already exists; choose a new one (nothing is overwritten)")
    return path


def export_model(model: nn.Module, dataset, config, out_dir: str | os.PathLike) -> Path:
    """Write ``model`` to the new folder ``out_dir`` in formats usable without this plugin.

    PerPEFT (any model with per-group item modules): ``group_<g>/`` for every formed group
    (with a peft backend a peft adapter folder, loadable with ``PeftModel.from_pretrained`` on the
    foundation model, plus ``projector.safetensors``), ``backbone.safetensors``, ``user_groups.tsv``
    and ``centroids.tsv``. Other models: ``model.safetensors``. Always ``export.json``, which
    says what each file is and carries the run config. The folder appears whole or not at all.
    """
    from safetensors.torch import save_model

    out_dir = check_export_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(out_dir) as folder:
        if is_grouped(model):
            manifest = model.export_groups(dataset, folder)
        else:
            save_model(model, str(folder / "model.safetensors"))
            manifest = {"files": {"model.safetensors": "the model's weights (torch state_dict names)"}}
        run = run_config_of(config)
        manifest = {"format": EXPORT_FORMAT, "model": run["model"], "dataset": run["dataset"], **manifest,
                    "run_config": run["settings"]}
        (folder / "export.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return out_dir


__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUME_SUFFIX",
    "apply_weights",
    "atomic_torch_save",
    "check_export_dir",
    "export_model",
    "load_checkpoint",
    "model_checkpoint",
    "remove_stale_temporaries",
    "resume_file_of",
    "rng_states",
    "run_config_of",
    "set_rng_states",
    "unique_checkpoint_name",
]

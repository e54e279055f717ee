"""What makes two runs "the same run": model, dataset, the settings that shape model and data, and
the dataset's item and user vocabularies.

Checkpoints carry this identity (``run_config["identity"]``). ``--resume=latest`` continues the
newest resume file *of this run*, never merely the newest file in ``saved/``; ``--resume=PATH``
refuses a file of another run; and a checkpoint is refused against a dataset whose item ids (or,
for group routing, user ids) differ from the ones it was trained on: its embedding rows would
silently belong to other items.

Fingerprints are sha256 digests. The settings fingerprint covers every setting of the run config
except those that do not change what is trained (:data:`NOT_SHAPING`, from the config schema): where files live, how
much is printed, how many epochs are planned (a resumed run may be given more), and hardware.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from recbole_perpeft.config_schema import NOT_SHAPING
from recbole_perpeft.errors import CheckpointError, ConfigError

RESUME_SUFFIX = ".last.pth"
_SHORT = 8


def _digest(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little"))  # length-prefixed: no two lists share a digest
        h.update(data)
    return h.hexdigest()


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """sha256 over the settings that shape model and data (plain values, keys sorted)."""
    shaping = {key: value for key, value in settings.items() if key not in NOT_SHAPING}
    return _digest([json.dumps(shaping, sort_keys=True, default=repr)])


def vocabulary_fingerprint(tokens: Iterable[Any]) -> str:
    """sha256 over raw ids in internal-id order (row ``i`` of an embedding belongs to ``tokens[i]``)."""
    return _digest(str(token) for token in tokens)


def run_identity(run_config: Mapping[str, Any], dataset: Any) -> dict[str, str]:
    """The identity of a run over ``dataset`` (any split of it); ``run_config``: the run's model,
    dataset and final settings as a checkpoint stores them (``run_config_of(config)``)."""
    return {
        "model": str(run_config["model"]),
        "dataset": str(run_config["dataset"]),
        "settings": settings_fingerprint(run_config["settings"]),
        "items": vocabulary_fingerprint(dataset.field2id_token[dataset.iid_field]),
        "users": vocabulary_fingerprint(dataset.field2id_token[dataset.uid_field]),
    }


def describe(identity: Mapping[str, str]) -> str:
    """``SASRec on ml-100k (settings 1a2b3c4d, items 5e6f7a8b, users 9c0d1e2f)``."""
    prints = ", ".join(f"{key} {str(identity.get(key, '?'))[:_SHORT]}" for key in ("settings", "items", "users"))
    return f"{identity.get('model')} on {identity.get('dataset')} ({prints})"


def differences(expected: Mapping[str, str], found: Mapping[str, str], keys: Iterable[str] | None = None) -> list[str]:
    """The parts of the identity (``model``, ``dataset``, ``settings``, ``items``, ``users``) that differ."""
    keys = list(keys) if keys is not None else ["model", "dataset", "settings", "items", "users"]
    return [key for key in keys if str(expected.get(key, "")).lower() != str(found.get(key, "")).lower()]


def identity_of_checkpoint(state: Mapping[str, Any]) -> dict[str, str] | None:
    """The identity a loaded checkpoint carries, ``None`` for files written before identities."""
    run = state.get("run_config")
    identity = run.get("identity") if isinstance(run, Mapping) else None
    return dict(identity) if isinstance(identity, Mapping) else None


def read_identity(path: str | os.PathLike) -> dict[str, str] | None:
    """The identity stored in a checkpoint file, read without loading its tensors into memory.

    ``None`` when the file carries none or cannot be read as a weights-only checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - truncated, foreign or legacy files are simply not candidates
        return None
    return identity_of_checkpoint(state) if isinstance(state, Mapping) else None


def find_resume_file(checkpoint_dir: str | os.PathLike, identity: Mapping[str, str], resume: str | os.PathLike) -> Path:
    """The resume file ``--resume`` names: a path (checked by :func:`check_resume_identity` on load),
    or ``latest``: the newest resume file in ``checkpoint_dir`` whose identity is this run's.
    """
    if str(resume) != "latest":
        path = Path(resume)
        if not path.is_file():
            raise ConfigError(f"resume file not found: {path}")
        return path
    folder = Path(checkpoint_dir)
    files = sorted(folder.glob(f"*{RESUME_SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
    others: list[str] = []
    for path in files:
        found = read_identity(path)
        if found is not None and not differences(identity, found):
            return path
        others.append(f"{path.name} ({describe(found) if found else 'no run identity'})")
    seen = f"; other runs' resume files there: {'; '.join(others[:3])}" + (" ..." if len(others) > 3 else "") \
        if others else ""
    raise ConfigError(
        f"--resume=latest: no resume file of this run ({describe(identity)}) in {folder}{seen}. "
        "Give the run's own arguments, or --resume=PATH, or start without --resume"
    )


def check_resume_identity(path: str | os.PathLike, state: Mapping[str, Any], identity: Mapping[str, str]) -> None:
    """Refuse (one line) to continue ``path`` unless it is a resume file of the run ``identity`` describes."""
    found = identity_of_checkpoint(state)
    if found is None:
        raise CheckpointError(
            f"{path} carries no run identity (written by an older version), so it cannot be checked to belong "
            f"to this run ({describe(identity)}); start afresh without --resume"
        )
    differ = differences(identity, found)
    if differ:
        raise CheckpointError(
            f"{path} belongs to another run: {describe(found)}, not this run's {describe(identity)} "
            f"(different: {', '.join(differ)}); resume it with that run's arguments, or start without --resume"
        )


def check_vocabulary(path: str | os.PathLike, state: Mapping[str, Any], dataset: Any, *, users: bool) -> None:
    """Refuse (one line) to apply a checkpoint to a dataset with other item (or user) ids.

    ``users``: also the user ids (models that route known users to their group by internal id).
    Checkpoints without an identity (older versions) cannot be checked and pass.
    """
    found = identity_of_checkpoint(state)
    if found is None:
        return
    current = {
        "items": vocabulary_fingerprint(dataset.field2id_token[dataset.iid_field]),
        "users": vocabulary_fingerprint(dataset.field2id_token[dataset.uid_field]),
    }
    differ = differences(current, found, ["items", "users"] if users else ["items"])
    if differ:
        which = " and ".join("item ids" if key == "items" else "user ids" for key in differ)
        raise CheckpointError(
            f"{path} was trained on dataset '{found.get('dataset')}' with other {which} than the dataset "
            f"loaded now (from {dataset.config['data_path']}); its weights would score the wrong items. "
            "Point --data_path at the dataset it was trained on"
        )

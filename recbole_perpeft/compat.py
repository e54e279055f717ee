"""Every fix RecBole 1.2.1 needs on today's NumPy / PyTorch stack, in one place.

* NumPy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``; RecBole's
  ``Config.compatibility_settings`` and its metric / dataset code still read them.
* PyTorch >= 2.6 loads checkpoints with ``weights_only=True``. RecBole pickles its whole
  ``Config`` into checkpoints, which such a load refuses. We save plain tensors and builtins only
  and load with ``weights_only=True``: no pickled code from a checkpoint is ever executed.
* RecBole names checkpoints by the second; parallel runs (Ray trials) collide. Our names carry a
  process id and a random suffix.
"""

from __future__ import annotations

import os
import pickle
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbole_perpeft.atomic_write import atomic_open
from recbole_perpeft.errors import CheckpointError

_NUMPY_ALIASES = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}


def restore_numpy_aliases() -> None:
    """Put back the NumPy 1 aliases RecBole reads (no-op on NumPy 1)."""
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def unique_checkpoint_name(model_name: str) -> str:
    """A checkpoint file name that two runs started in the same second never share."""
    from recbole.utils import get_local_time

    return f"{model_name}-{get_local_time()}-{os.getpid()}-{secrets.token_hex(3)}.pth"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` so a crash never leaves a truncated file under that name.

    The file gets the usual permissions (0644 under umask 022; see recbole_perpeft.atomic_write).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb", fsync=True) as handle:
        torch.save(obj, handle)


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and builtins only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", *, model_name: str | None = None
) -> dict[str, Any]:
    """A checkpoint's contents, loaded weights-only; every failure is a one-line :class:`CheckpointError`.

    With ``model_name``, a checkpoint of another model is refused too.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = safe_load(path, map_location=map_location)
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

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
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbole_perpeft.atomic_write import atomic_open

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

"""The fix RecBole 1.2.1 needs on NumPy 2, applied before anything of RecBole runs.

NumPy 2 removed ``np.float_``, ``np.complex_`` and ``np.unicode_``; RecBole's
``Config.compatibility_settings`` and its metric / dataset code still read them.

RecBole's other incompatibilities are handled where they arise: checkpoints that PyTorch >= 2.6
refuses and names that parallel runs share (:mod:`recbole_perpeft.checkpoint`), the pickled
dataset cache (:func:`recbole_perpeft.run.create_dataset`), the contradictory default sampling of
``loss_type: CE`` models (:class:`recbole_perpeft.config.Config`), unknown model names reaching
lightgbm / xgboost imports (:func:`recbole_perpeft.utils.get_model`).
"""

from __future__ import annotations

import numpy as np

_NUMPY_ALIASES = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}


def restore_numpy_aliases() -> None:
    """Put back the NumPy 1 aliases RecBole reads (no-op on NumPy 1)."""
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)

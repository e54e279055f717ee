"""PEFT backends: one named adapter (or side network) per user group behind one interface.

``build_grouped_encoder(foundation, peft_type, n_groups, content, content_key, ...)`` with
``peft_type`` one of :data:`PEFT_TYPES`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recbole_perpeft.encoders.base import FoundationEncoder
from recbole_perpeft.peft_backends.base import GroupedItemEncoder, group_name

#: ``lora``/``ia3``: peft with the paper's defaults; ``peft``: any peft method named in
#: ``peft_config['peft_type']``; ``iisan``: side network over cached states; ``none``: frozen.
PEFT_TYPES = ("lora", "ia3", "peft", "iisan", "none")


def build_grouped_encoder(
    foundation: FoundationEncoder,
    peft_type: str,
    n_groups: int,
    content: dict[str, torch.Tensor],
    content_key: str,
    peft_config: dict | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    *,
    seed: int | None = None,
) -> GroupedItemEncoder:
    """Wrap ``foundation`` with ``n_groups`` adapters of kind ``peft_type`` over ``content``.

    ``content`` holds the processed arrays of all items (row = internal item id, row 0 padding);
    ``content_key`` identifies them (it keys the on-disk caches of ``iisan`` and ``none``).
    ``peft_config`` overrides the method's defaults. ``seed`` defaults to ``foundation.seed``.
    The ``lora``/``ia3``/``peft`` backends inject adapters into ``foundation.model`` in place, so
    build a fresh foundation encoder per backend.
    """
    if not isinstance(peft_type, str) or peft_type.lower() not in PEFT_TYPES:
        raise ValueError(f"unknown peft_type {peft_type!r}; valid: {', '.join(PEFT_TYPES)}")
    kind = peft_type.lower()
    if not isinstance(n_groups, int) or n_groups < 1:
        raise ValueError(f"n_groups must be a positive int, got {n_groups!r}")
    if kind in ("lora", "ia3", "peft"):
        from recbole_perpeft.peft_backends.peft_adapter import (
            PeftGroupedEncoder,
            build_peft_config,
        )

        config = build_peft_config(foundation, kind, peft_config)
        return PeftGroupedEncoder(foundation, config, n_groups, content, peft_type=kind, seed=seed)
    if kind == "iisan":
        from recbole_perpeft.peft_backends.iisan import IISANGroupedEncoder

        return IISANGroupedEncoder(
            foundation,
            n_groups,
            content,
            content_key,
            peft_config=peft_config,
            cache_dir=cache_dir,
            show_progress=show_progress,
            seed=seed,
        )
    from recbole_perpeft.peft_backends.frozen import FrozenGroupedEncoder

    if peft_config:
        raise ValueError(f"peft_type 'none' takes no peft_config, got {sorted(peft_config)}")
    return FrozenGroupedEncoder(
        foundation, n_groups, content, content_key, cache_dir=cache_dir, show_progress=show_progress
    )


__all__ = ["PEFT_TYPES", "GroupedItemEncoder", "build_grouped_encoder", "group_name"]

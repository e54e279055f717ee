"""``none``: the frozen foundation model without any adapter (a baseline).

Its features never change, so they are computed once over the catalogue, cached on disk (keyed by
content and model fingerprint, like IISAN's states) and served by lookup; every group shares them
and owns no parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recbole_perpeft.cache import cache_root
from recbole_perpeft.encoders.base import FoundationEncoder
from recbole_perpeft.encoders.processors import stable_hash
from recbole_perpeft.peft_backends.base import GroupedItemEncoder
from recbole_perpeft.peft_backends.common import (
    ItemContentStore,
    cached_arrays,
)

_CACHE_VERSION = "frozen-features-v1"


class FrozenGroupedEncoder(GroupedItemEncoder):
    """Fixed foundation features for every group; no trainable parameters."""

    def __init__(
        self,
        foundation: FoundationEncoder,
        n_groups: int,
        content: dict[str, torch.Tensor],
        content_key: str,
        *,
        cache_dir: str | Path | None = None,
        show_progress: bool = True,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        if n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        self.n_groups = int(n_groups)
        self.feature_dim = foundation.feature_dim
        store = ItemContentStore(content, foundation)
        self.n_items = store.n_items
        self._foundation_params = foundation.base_parameter_count()
        self.cache_key = stable_hash({"v": _CACHE_VERSION, "content": content_key, "model": foundation.fingerprint()})
        root = Path(cache_dir) if cache_dir is not None else cache_root() / "encoders"

        @torch.no_grad()
        def fill(out: dict[str, np.ndarray]) -> None:
            from tqdm.auto import tqdm

            was_training = foundation.training
            foundation.eval()
            try:
                starts = range(0, self.n_items, batch_size)
                for start in tqdm(starts, desc="frozen features", disable=not show_progress):
                    rows = torch.arange(start, min(start + batch_size, self.n_items))
                    feats = foundation.encode(store.gather(rows))
                    out["features"][start : start + len(rows)] = feats.float().cpu().numpy()
            finally:
                foundation.train(was_training)

        arrays, self.cache_built = cached_arrays(
            root / "frozen",
            self.cache_key,
            {"features": ((self.n_items, self.feature_dim), "float32")},
            fill,
            meta={"content_key": content_key, "encoder": foundation.name},
        )
        self.register_buffer("features", torch.from_numpy(np.array(arrays["features"])), persistent=False)

    def encode(self, item_ids: torch.Tensor, group: int) -> torch.Tensor:
        self.check_group(group)
        return self.features[item_ids.to(self.features.device).long()]

    def copy_group(self, source: int, target: int) -> None:
        self.check_group(source)
        self.check_group(target)  # nothing to copy: groups share the frozen features

    def group_parameters(self, group: int) -> Iterator[nn.Parameter]:
        self.check_group(group)
        return iter(())

    def export_group(self, group: int, folder: Path) -> None:
        self.check_group(group)  # no per-group weights: the frozen model is the foundation model itself

    def foundation_parameter_count(self) -> int:
        return self._foundation_params

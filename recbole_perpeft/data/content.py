"""Item content (title and image per item) aligned with RecBole's internal item ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ItemContent:
    """Content of every item, indexed by RecBole internal item id (index 0 is padding).

    ``image_paths[i]`` is an absolute path or ``None``; ``has_title`` / ``has_image`` are the
    masks the encoder uses for items lacking a title or an image (never dropped).
    """

    raw_item_ids: list[str]
    titles: list[str]
    image_paths: list[str | None]
    has_title: np.ndarray
    has_image: np.ndarray

    def __len__(self) -> int:
        return len(self.titles)

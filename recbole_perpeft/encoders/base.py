"""The small interface every foundation-model item encoder implements.

Data flows: item content (titles, images) -> ``ItemProcessor`` (tokenise / resize once, cached on
disk by :mod:`recbole_perpeft.data.content_cache`) -> ``FoundationEncoder`` (a frozen Hugging Face
model, adapted by a PEFT backend) -> one feature vector per item.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn


class ItemProcessor(ABC):
    """Turns raw item content into fixed-shape arrays, exactly once per dataset.

    ``text_length`` tokens per title; ``image_shape`` is ``(channels, height, width)`` or
    ``None`` for text-only encoders.
    """

    text_length: int
    image_shape: tuple[int, int, int] | None

    @abstractmethod
    def tokenize(self, titles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(input_ids, attention_mask)``, both int64 of shape ``[len(titles), text_length]``."""

    @abstractmethod
    def process_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return float32 pixel values of shape ``[len(images), *image_shape]``."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A stable string that changes whenever the arrays this processor produces would change."""


class FoundationEncoder(nn.Module, ABC):
    """A frozen foundation model that maps processed item content to one feature per item.

    ``content`` holds the cached arrays for a batch of items: ``input_ids``, ``attention_mask``
    (``[n, text_length]``), ``pixel_values`` (``[n, *image_shape]``, absent for text-only),
    ``has_title`` and ``has_image`` (bool ``[n]``).
    """

    feature_dim: int
    processor: ItemProcessor

    @abstractmethod
    def encode(self, content: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return item features ``[n, feature_dim]``."""

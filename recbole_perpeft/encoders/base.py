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

#: A step's items go through the model in one pass unless length-sorted passes save more than
#: this share of padded tokens (see ``length_buckets``).
BUCKET_SLACK = 0.25


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

    #: The wrapped Hugging Face model; PEFT backends inject their adapters into it in place.
    model: nn.Module
    #: The name the encoder was built from (hub id, local path or a local alias).
    name: str = ""
    #: Seed the encoder (and backends built on it) use for anything random.
    seed: int = 0
    #: ``("image", "text")`` for CLIP-like encoders, ``("text",)`` for text-only ones.
    modalities: tuple[str, ...] = ("text",)

    @abstractmethod
    def encode(self, content: dict[str, torch.Tensor]) -> torch.Tensor:
        """Return item features ``[n, feature_dim]``."""

    def encode_bucketed(self, content: dict[str, torch.Tensor], bucket_size: int) -> torch.Tensor:
        """``encode`` over length-sorted buckets of about ``bucket_size`` rows; the same features.

        Each bucket is trimmed to its own longest title (``encode`` trims), so a batch of mostly
        short titles with a few long ones no longer pays the longest title's width for every
        row; titles of similar length stay in one pass (``BUCKET_SLACK``). Gradients flow as
        through one ``encode`` call.
        """
        n = content["input_ids"].shape[0]
        buckets = length_buckets(title_lengths(content), bucket_size, slack=BUCKET_SLACK)
        if len(buckets) <= 1:
            return self.encode(content)
        parts = [self.encode({k: v[rows] for k, v in content.items()}) for rows in buckets]
        order = torch.cat(buckets)
        # Undo the sort: row order[i] of the input is row i of the concatenation.
        back = torch.empty_like(order)
        back[order] = torch.arange(n)
        return torch.cat(parts).index_select(0, back.to(parts[0].device))

    # -- optional extensions used by the PEFT backends -------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def fingerprint(self) -> str:
        """A stable string that changes whenever the frozen model's outputs could change."""
        raise NotImplementedError(f"{type(self).__name__} has no fingerprint()")

    def num_hidden_layers(self) -> dict[str, int]:
        """Transformer layers per modality tower (``{"image": 12, "text": 12}``)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its layers")

    def tower_widths(self) -> dict[str, int]:
        """Hidden width per modality tower."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its layers")

    def layer_states(
        self, content: dict[str, torch.Tensor], layers: dict[str, Sequence[int]]
    ) -> dict[str, torch.Tensor]:
        """Per-layer summary token of each tower: ``{modality: [n, len(layers[m]), width]}``.

        Layer 0 is the embedding output, layer ``k`` the output of the ``k``-th transformer block.
        """
        raise NotImplementedError(f"{type(self).__name__} does not expose per-layer states")

    def default_peft_targets(self, peft_type: str) -> dict[str, list[str]]:
        """Module names a PEFT method targets by default (``target_modules`` and friends)."""
        raise NotImplementedError(f"{type(self).__name__} has no default PEFT targets")

    def base_parameter_count(self) -> int:
        """Parameters of the foundation model itself, adapters excluded."""
        return sum(p.numel() for p in base_parameters(self.model))


def base_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that do not belong to an injected PEFT adapter."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft is optional for the frozen and IISAN paths
        return list(model.parameters())
    adapter_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in (*module.adapter_layer_names, *module.other_param_names):
                holder = getattr(module, attr, None)
                if isinstance(holder, nn.Module):
                    adapter_ids.update(id(p) for p in holder.parameters())
    return [p for p in model.parameters() if id(p) not in adapter_ids]


def trim_to_longest(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns no row of the batch uses.

    Titles are cached padded to the model's full text length (77 tokens for CLIP) but are
    usually much shorter; attention over the padding is pure waste. With right padding the
    result is exact: positions keep their ids and every token a row attends to is kept.
    """
    used = attention_mask.bool().any(dim=0).nonzero()
    width = int(used.max()) + 1 if len(used) else 1
    return input_ids[:, :width], attention_mask[:, :width]


def title_lengths(content: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokens per row (0 for rows without a title, which skip the text tower)."""
    lengths = content["attention_mask"].sum(dim=1)
    has_title = content.get("has_title")
    return lengths if has_title is None else lengths * has_title.to(lengths.dtype)


def length_buckets(lengths: torch.Tensor, bucket_size: int, slack: float | None = None) -> list[torch.Tensor]:
    """Row indices in ascending length order, cut into buckets of at most ``bucket_size`` rows.

    With each bucket trimmed to its longest row, the padded tokens an encoder processes drop
    from ``n * max(lengths)`` to about ``sum(lengths)``. With ``slack``, neighbouring buckets are
    merged (without a row limit) while one pass would process at most ``1 + slack`` times the
    padded tokens of separate ones: every pass has a fixed cost, which for small models and
    titles of similar length outweighs a little padding. The sort is stable.
    """
    if bucket_size <= 0:
        raise ValueError(f"bucket_size must be positive, got {bucket_size}")
    lengths = lengths.cpu()
    order = torch.argsort(lengths, stable=True)
    buckets = list(torch.split(order, bucket_size))
    if slack is None or len(buckets) < 2:
        return buckets
    merged = [buckets[0]]
    for bucket in buckets[1:]:
        last = merged[-1]
        # Ascending order: a bucket's longest row is its last one.
        apart = len(last) * int(lengths[last[-1]]) + len(bucket) * int(lengths[bucket[-1]])
        together = (len(last) + len(bucket)) * int(lengths[bucket[-1]])
        if together <= (1 + slack) * apart:
            merged[-1] = torch.cat([last, bucket])
        else:
            merged.append(bucket)
    return merged

"""Item encoders for PerPEFT, built outside the model and chosen by name (``item_encoder``).

An item encoder is the foundation model, the content cache it reads and the PEFT backend with
one adapter per group (:class:`recbole_perpeft.peft_backends.base.GroupedItemEncoder`). Building
one reads infrastructure settings (where caches live, the device, progress bars, the image size
limit) and may decode and encode every item; the model itself only reads modelling keys and is
handed the finished encoder.

A new encoder is one entry::

    @register_item_encoder("oracle")
    def build_oracle(config, dataset, n_groups):
        ...

and a run chooses it with ``item_encoder: oracle``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from recbole_perpeft.cache import cache_root
from recbole_perpeft.errors import ConfigError

DEFAULT_ITEM_ENCODER = "default"

#: ``(config, dataset, n_groups) -> encoder``: the finished encoder, on ``config["device"]``.
ItemEncoderBuilder = Callable[[Any, Any, int], nn.Module]

_BUILDERS: dict[str, ItemEncoderBuilder] = {}


def register_item_encoder(name: str) -> Callable[[ItemEncoderBuilder], ItemEncoderBuilder]:
    """Register the decorated builder under ``name`` (a second builder for a name is refused)."""

    def register(builder: ItemEncoderBuilder) -> ItemEncoderBuilder:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"an item encoder named {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return register


def item_encoder_names() -> list[str]:
    """The registered encoder names, sorted."""
    return sorted(_BUILDERS)


def build_item_encoder(config, dataset, n_groups: int) -> nn.Module:
    """The encoder ``config["item_encoder"]`` names (``default`` when unset), with ``n_groups`` adapters."""
    name = config["item_encoder"] or DEFAULT_ITEM_ENCODER
    if name not in _BUILDERS:
        raise ConfigError(f"item_encoder must be one of {', '.join(item_encoder_names())}; got {name!r}")
    return _BUILDERS[name](config, dataset, n_groups)


@register_item_encoder(DEFAULT_ITEM_ENCODER)
def build_default_item_encoder(config, dataset, n_groups: int) -> nn.Module:
    """The foundation model, its content cache and the PEFT backend with ``n_groups`` adapters."""
    from recbole_perpeft.data.content_cache import build_or_load_content_cache
    from recbole_perpeft.encoders import build_foundation_encoder
    from recbole_perpeft.encoders.factory import progress_bars
    from recbole_perpeft.peft_backends import build_grouped_encoder

    caches = cache_root(config["cache_dir"])
    with progress_bars(config["show_progress"]):
        foundation = build_foundation_encoder(config["foundation_model"], seed=config["seed"])
    content = build_or_load_content_cache(
        dataset.item_content,
        foundation.processor,
        caches / "content",
        show_progress=config["show_progress"],
        logger=dataset.logger,
        max_image_pixels=config["max_image_pixels"],
    )
    return build_grouped_encoder(
        foundation,
        config["peft_type"],
        n_groups,
        content.tensors,
        content.key,
        peft_config=config["peft_config"],
        cache_dir=caches / "encoders",
        show_progress=config["show_progress"],
        seed=config["seed"],
    ).to(config["device"])


__all__ = [
    "DEFAULT_ITEM_ENCODER",
    "build_default_item_encoder",
    "build_item_encoder",
    "item_encoder_names",
    "register_item_encoder",
]

"""The data room: dataset layout, item content, the content cache, converters, mmdemo, registry.

The content cache (which imports torch) is loaded lazily so that the converters start fast.
"""

from __future__ import annotations

from typing import Any

from recbole_perpeft.data.content import ItemContent, load_item_content
from recbole_perpeft.data.mmdemo import generate_mmdemo
from recbole_perpeft.data.registry import (
    EMBEDDED_DATASETS,
    PAPER_DATASETS,
    DatasetNotFoundError,
    list_datasets,
    resolve_dataset_dir,
)

_LAZY = {
    "ContentCache",
    "CacheNotWritableError",
    "build_or_load_content_cache",
    "cache_key",
}

__all__ = [
    "EMBEDDED_DATASETS",
    "PAPER_DATASETS",
    "CacheNotWritableError",
    "ContentCache",
    "DatasetNotFoundError",
    "ItemContent",
    "build_or_load_content_cache",
    "cache_key",
    "generate_mmdemo",
    "list_datasets",
    "load_item_content",
    "resolve_dataset_dir",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from recbole_perpeft.data import content_cache

        return getattr(content_cache, name)
    raise AttributeError(f"module 'recbole_perpeft.data' has no attribute {name!r}")

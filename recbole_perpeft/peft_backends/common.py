"""Pieces the backends share: the per-item content table and an on-disk array cache."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from recbole_perpeft.cache import allocated_memmap, build_once
from recbole_perpeft.encoders.base import FoundationEncoder, length_buckets, title_lengths

CONTENT_KEYS = ("input_ids", "attention_mask", "pixel_values", "has_title", "has_image")


class ItemContentStore:
    """Processed content of every item, kept on the CPU (pixels may be a float16 memory map).

    It is deliberately not an ``nn.Module`` buffer: a catalogue's pixels are gigabytes and must
    neither follow ``.to(device)`` nor land in checkpoints. ``gather`` copies only requested rows.
    """

    def __init__(self, content: dict[str, torch.Tensor], foundation: FoundationEncoder) -> None:
        tensors = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
        unknown = sorted(set(tensors) - set(CONTENT_KEYS))
        if unknown:
            raise ValueError(f"unexpected content keys {unknown}; expected a subset of {list(CONTENT_KEYS)}")
        for key in ("input_ids", "attention_mask"):
            if key not in tensors:
                raise ValueError(f"content lacks {key!r} (int64 [n_items, text_length])")
        n = tensors["input_ids"].shape[0]
        for key, value in tensors.items():
            if value.shape[0] != n:
                raise ValueError(f"content[{key!r}] has {value.shape[0]} rows, input_ids has {n}")
        if n == 0:
            raise ValueError("content is empty: it needs one row per internal item id (row 0 = padding)")
        width = foundation.processor.text_length
        if tensors["input_ids"].dim() != 2 or tensors["input_ids"].shape[1] != width:
            raise ValueError(
                f"input_ids shape {tuple(tensors['input_ids'].shape)} does not match the encoder's "
                f"text_length {width}: was the content processed with a different processor?"
            )
        image_shape = foundation.processor.image_shape
        pixels = tensors.get("pixel_values")
        if pixels is not None and image_shape is not None and tuple(pixels.shape[1:]) != tuple(image_shape):
            raise ValueError(f"pixel_values rows are {tuple(pixels.shape[1:])}, encoder expects {image_shape}")
        if "image" in foundation.modalities and pixels is None:
            warnings.warn("content has no pixel_values: every item gets a zero image half", stacklevel=3)
        for key in ("has_title", "has_image"):
            if key in tensors:
                tensors[key] = tensors[key].to(torch.bool)
        if pixels is None or image_shape is None:
            tensors.pop("pixel_values", None)
            tensors["has_image"] = torch.zeros(n, dtype=torch.bool)
        tensors.setdefault("has_title", torch.ones(n, dtype=torch.bool))
        tensors.setdefault("has_image", torch.ones(n, dtype=torch.bool))
        self.tensors = {k: v.cpu() if v.device.type != "cpu" else v for k, v in tensors.items()}
        self.n_items = n

    def check_ids(self, item_ids: torch.Tensor) -> None:
        if item_ids.numel() and (int(item_ids.min()) < 0 or int(item_ids.max()) >= self.n_items):
            raise IndexError(
                f"item ids must lie in [0, {self.n_items}); got min {int(item_ids.min())}, max {int(item_ids.max())}"
            )

    def sorted_batches(self, batch_size: int) -> list[torch.Tensor]:
        """Every item id in batches of similar title length (ascending), for catalogue passes.

        The encoders trim each batch to its longest title, so sorted batches pay about the
        titles' own length instead of the longest title's in every batch.
        """
        return length_buckets(title_lengths(self.tensors), batch_size)

    def gather(self, rows: torch.Tensor, pin: bool = False) -> dict[str, torch.Tensor]:
        """Rows ``rows`` (CPU int64) of every array; pinned when copies to a GPU follow."""
        out = {k: v.index_select(0, rows) for k, v in self.tensors.items()}
        if pin:
            out = {k: v.pin_memory() for k, v in out.items()}
        return out


def unique_rows(item_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ids (on the CPU, for gathering) and the inverse index (on the ids' device)."""
    flat = item_ids.reshape(-1).long()
    uniq, inverse = torch.unique(flat, return_inverse=True)
    return uniq.cpu(), inverse


# -- on-disk array cache ------------------------------------------------------------------------


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _problem_with_cache(
    path: Path, key: str, specs: dict[str, tuple[tuple[int, ...], str]], verify: bool
) -> str | None:
    """``None`` if the cache at ``path`` is complete and intact, else what is wrong with it."""
    meta_file = path / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable meta.json ({err.__class__.__name__})"
    if meta.get("key") != key:
        return "meta.json belongs to another key"
    for name, (shape, dtype) in specs.items():
        file = path / f"{name}.npy"
        try:
            arr = np.load(file, mmap_mode="r")
        except (OSError, ValueError) as err:
            return f"{file.name} unreadable ({err})"
        if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
            return f"{file.name} has shape {arr.shape} {arr.dtype}, expected {tuple(shape)} {dtype}"
        del arr
        if verify and meta.get("digests", {}).get(name) != _file_digest(file):
            return f"{file.name} checksum mismatch"
    return None


def cached_arrays(
    root: Path,
    key: str,
    specs: dict[str, tuple[tuple[int, ...], str]],
    fill: Callable[[dict[str, np.ndarray]], None],
    *,
    meta: dict | None = None,
    verify: bool = True,
) -> tuple[dict[str, np.ndarray], bool]:
    """Read-only memory maps of the arrays cached under ``root/key``, building them if needed.

    ``fill`` receives writable ``.npy`` memory maps of the requested shapes and fills them; a
    ``meta.json`` with checksums is written last. Locking, publishing and rebuilding a damaged
    cache (shape, dtype, checksum; with a warning) are :func:`recbole_perpeft.cache.build_once`'s.
    Returns ``(arrays, built)``.
    """
    final = Path(root) / key

    def build(folder: Path) -> None:
        arrays = {
            name: allocated_memmap(folder / f"{name}.npy", dtype, shape)  # full disk: ENOSPC, not SIGBUS
            for name, (shape, dtype) in specs.items()
        }
        fill(arrays)
        for arr in arrays.values():
            arr.flush()
        del arrays
        digests = {name: _file_digest(folder / f"{name}.npy") for name in specs}
        info = {"key": key, "digests": digests, "specs": {k: [list(s), d] for k, (s, d) in specs.items()}}
        (folder / "meta.json").write_text(json.dumps({**(meta or {}), **info}, indent=1, default=str))

    built = build_once(final, lambda folder: _problem_with_cache(folder, key, specs, verify), build)
    return {name: np.load(final / f"{name}.npy", mmap_mode="r") for name in specs}, built


def select_layers(n_layers: int, n_states: int = 7) -> list[int]:
    """Evenly spaced hidden-state indices from the embedding output (0) to the last layer.

    12 layers, 7 states -> 0, 2, 4, ..., 12 (IISAN's reference choice); never more than
    ``n_layers + 1`` states.
    """
    if n_states < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states}")
    n_states = min(n_states, n_layers + 1)
    if n_states == 1:
        return [n_layers]
    return sorted({round(i * n_layers / (n_states - 1)) for i in range(n_states)})

"""On-disk cache of processed item content (token ids and pixel values), memory-mapped.

Every title is tokenised and every image decoded and resized exactly once per (dataset content,
processor); training and evaluation then read the arrays through ``np.load(mmap_mode=...)``
and never decode a JPEG again.

Layout: ``cache_root/<key>/{input_ids,attention_mask,pixel_values,has_title,has_image}.npy``
plus ``meta.json``, written last, which records every file's shape and dtype so that a damaged
cache (missing or truncated file, wrong shape) is detected on load and rebuilt.

Building, publishing, locking and damage handling are :func:`recbole_perpeft.cache.build_once`'s:
the build runs under a file lock in a temporary folder published with one rename; a second
process waiting on the lock finds the finished cache and reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from recbole_perpeft.cache import CacheNotWritableError, allocated_memmap, build_once
from recbole_perpeft.data.content import ItemContent
from recbole_perpeft.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    TOO_MANY_PIXELS,
    UNDECODABLE,
    ImageRefusedError,
    check_max_pixels,
    decode_rgb,
)
from recbole_perpeft.encoders.base import ItemProcessor

# Bump when the layout or the meaning of a stored array changes: old caches are then rebuilt.
FORMAT_VERSION = 1
_META = "meta.json"
# Decoded pixels held at once before they go to the processor: a batch of large (but allowed)
# images is processed in several calls rather than all decoded together.
_PIXEL_BUDGET = 64_000_000


@dataclass
class ContentCache:
    """A loaded cache: ``tensors`` are memory-mapped (copy-on-write: writes stay in memory)."""

    key: str
    path: Path
    tensors: dict[str, torch.Tensor]
    built: bool
    report: dict[str, Any] = field(default_factory=dict)


def cache_key(
    content: ItemContent, processor: ItemProcessor, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> str:
    """sha256 over everything the cached arrays depend on.

    Image files enter by path, size and ``mtime_ns`` (not by bytes: hashing every JPEG on every
    start would cost as much as decoding them); replacing a file in place updates its mtime.
    """
    h = hashlib.sha256()

    def put(tag: str, value: str) -> None:
        data = value.encode("utf-8", errors="surrogatepass")
        h.update(f"{tag}:{len(data)}:".encode())
        h.update(data)

    put("format", str(FORMAT_VERSION))
    put("processor", processor.fingerprint())
    put("text_length", str(processor.text_length))
    put("image_shape", repr(processor.image_shape))
    if processor.image_shape is not None:  # the cap decides which images are kept
        put("max_image_pixels", str(max_image_pixels))
    put("n", str(len(content)))
    for raw_id, title, path in zip(
        content.raw_item_ids, content.titles, content.image_paths
    ):
        put("id", raw_id)
        put("title", title)
        if path is None:
            put("image", "")
        else:
            try:
                st = os.stat(path)
                put("image", f"{path}|{st.st_size}|{st.st_mtime_ns}")
            except OSError:
                put("image", f"{path}|missing")
    h.update(np.ascontiguousarray(content.has_title, dtype=bool).tobytes())
    h.update(np.ascontiguousarray(content.has_image, dtype=bool).tobytes())
    return h.hexdigest()


def _expected_files(processor: ItemProcessor) -> list[str]:
    names = ["input_ids", "attention_mask", "has_title", "has_image"]
    if processor.image_shape is not None:
        names.append("pixel_values")
    return names


def _load(path: Path, key: str, processor: ItemProcessor, n_items: int) -> ContentCache:
    """Open a published cache; raises ``ValueError`` describing any damage."""
    meta_path = path / _META
    if not meta_path.is_file():
        raise ValueError(f"{meta_path} is missing (interrupted or damaged cache)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{meta_path} is unreadable: {err}") from err
    if meta.get("format_version") != FORMAT_VERSION or meta.get("key") != key:
        raise ValueError(
            f"{meta_path} does not describe this cache (key/format differ)"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in _expected_files(processor):
        spec = meta.get("arrays", {}).get(name)
        if spec is None:
            raise ValueError(f"{meta_path} lists no array '{name}'")
        file = path / f"{name}.npy"
        if not file.is_file():
            raise ValueError(f"{file} is missing")
        try:
            # 'c' = copy-on-write: pages are shared with the page cache, and an accidental
            # in-place write modifies memory only (a read-only map would crash the process).
            arr = np.load(file, mmap_mode="c", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"{file} is unreadable ({err})") from err
        if list(arr.shape) != spec["shape"] or str(arr.dtype) != spec["dtype"]:
            raise ValueError(
                f"{file} has shape {list(arr.shape)} / {arr.dtype}, "
                f"meta.json says {spec['shape']} / {spec['dtype']}"
            )
        if arr.shape[0] != n_items:
            raise ValueError(f"{file} has {arr.shape[0]} rows, expected {n_items}")
        tensors[name] = torch.from_numpy(arr)
    return ContentCache(
        key=key, path=path, tensors=tensors, built=False, report=meta.get("report", {})
    )


def _store_processed(
    pixels: np.ndarray, rows: list[int], images: list[Image.Image], processor: ItemProcessor
) -> None:
    """Run the processor over decoded images and write their rows of ``pixel_values``."""
    values = np.asarray(processor.process_images(images))
    if values.shape != (len(images), *processor.image_shape):
        raise ValueError(
            f"processor.process_images returned {values.shape}, "
            f"expected {(len(images), *processor.image_shape)}"
        )
    pixels[rows] = values.astype(np.float16)


def _process_images(
    pixels: np.ndarray,
    content: ItemContent,
    has_image: np.ndarray,
    items: range,
    processor: ItemProcessor,
    max_pixels: int,
    refused: dict[str, list[str]],
) -> None:
    """Decode the images of ``items`` under the pixel cap and store their processed pixels.

    A refused image (over the cap, or undecodable) flips ``has_image`` to False and is listed in
    ``refused[kind]``; decoded images go to the processor whenever they hold ``_PIXEL_BUDGET``
    pixels together, so a batch of large images never sits decoded in memory all at once.
    """
    rows: list[int] = []
    images: list[Image.Image] = []
    held = 0
    for i in items:
        if not has_image[i]:
            continue
        try:
            image = decode_rgb(content.image_paths[i], max_pixels)
        except ImageRefusedError as error:
            # Found only now: flag it so the encoder treats the item as image-less.
            has_image[i] = False
            refused[error.kind].append(content.raw_item_ids[i])
            continue
        rows.append(i)
        images.append(image)
        held += image.width * image.height
        if held >= _PIXEL_BUDGET:
            _store_processed(pixels, rows, images, processor)
            rows, images, held = [], [], 0
    if images:
        _store_processed(pixels, rows, images, processor)


def _build(
    tmp: Path,
    key: str,
    content: ItemContent,
    processor: ItemProcessor,
    batch_size: int,
    show_progress: bool,
    log: logging.Logger,
    max_image_pixels: int,
) -> dict[str, Any]:
    """Write every array into ``tmp`` (``meta.json`` last); returns the build report."""
    n = len(content)
    text_length = int(processor.text_length)
    input_ids = np.zeros((n, text_length), dtype=np.int64)
    attention_mask = np.zeros((n, text_length), dtype=np.int64)
    has_title = np.asarray(content.has_title, dtype=bool).copy()
    has_image = np.asarray(content.has_image, dtype=bool).copy()
    pixels = None
    if processor.image_shape is not None:
        shape = (n, *processor.image_shape)
        # float16 halves the disk; written batch by batch so the full array never sits in RAM.
        pixels = allocated_memmap(tmp / "pixel_values.npy", np.float16, shape)
    refused: dict[str, list[str]] = {UNDECODABLE: [], TOO_MANY_PIXELS: []}
    bar = tqdm(total=n, desc="content cache", unit="item", disable=not show_progress)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        ids, mask = processor.tokenize(content.titles[start:stop])
        ids, mask = np.asarray(ids), np.asarray(mask)
        if ids.shape != (stop - start, text_length) or mask.shape != ids.shape:
            raise ValueError(
                f"processor.tokenize returned {ids.shape}/{mask.shape}, "
                f"expected {(stop - start, text_length)}"
            )
        input_ids[start:stop] = ids
        attention_mask[start:stop] = mask
        if pixels is not None:
            _process_images(
                pixels, content, has_image, range(start, stop), processor, max_image_pixels, refused
            )
        bar.update(stop - start)
    bar.close()
    if pixels is not None:
        pixels.flush()
        del pixels
    # Items without content still go through the tokenizer (an empty title), but carry no
    # image: their pixel rows stay zero and the masks tell the encoder to ignore them.
    np.save(tmp / "input_ids.npy", input_ids)
    np.save(tmp / "attention_mask.npy", attention_mask)
    np.save(tmp / "has_title.npy", has_title)
    np.save(tmp / "has_image.npy", has_image)
    corrupt, too_large = refused[UNDECODABLE], refused[TOO_MANY_PIXELS]
    if corrupt:
        log.warning(
            "content cache: %d image(s) could not be decoded and are treated as missing (e.g. %s)",
            len(corrupt),
            ", ".join(corrupt[:5]),
        )
    if too_large:
        log.warning(
            "content cache: %d image(s) have more than max_image_pixels=%d pixels (read from the "
            "header, never decoded) and are treated as missing (e.g. %s)",
            len(too_large),
            max_image_pixels,
            ", ".join(too_large[:5]),
        )
    report = {
        "n_items": n - 1,
        "image_corrupt": len(corrupt),
        "image_corrupt_examples": corrupt[:20],
        "image_too_many_pixels": len(too_large),
        "image_too_many_pixels_examples": too_large[:20],
        "max_image_pixels": max_image_pixels,
        "n_with_title": int(has_title[1:].sum()),
        "n_with_image": int(has_image[1:].sum()),
    }
    arrays = {}
    for name in _expected_files(processor):
        arr = np.load(tmp / f"{name}.npy", mmap_mode="r")
        arrays[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
        del arr
    meta = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "processor": processor.fingerprint(),
        "arrays": arrays,
        "report": report,
    }
    # meta.json last: its presence marks a complete build.
    (tmp / _META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return report


def build_or_load_content_cache(
    content: ItemContent,
    processor: ItemProcessor,
    cache_root: Path,
    show_progress: bool = True,
    batch_size: int = 256,
    logger: logging.Logger | None = None,
    max_image_pixels: int | None = None,
) -> ContentCache:
    """Return the processed arrays of ``content``, building them once under ``cache_root``.

    Rebuilds when titles, image files (path, size, mtime), masks, the processor's fingerprint or
    the format version change, and when the existing cache is damaged (after a warning). Built
    and published by :func:`recbole_perpeft.cache.build_once`. An image whose header announces more
    than ``max_image_pixels`` pixels is never decoded: it is counted
    (``report["image_too_many_pixels"]``) and its item treated as image-less (``None``:
    :data:`~recbole_perpeft.data.images.DEFAULT_MAX_IMAGE_PIXELS`).
    """
    log = logger or logging.getLogger(__name__)
    max_image_pixels = check_max_pixels(max_image_pixels)
    key = cache_key(content, processor, max_image_pixels)
    target = Path(cache_root) / key
    n = len(content)
    reports: list[dict[str, Any]] = []

    def problem_with(folder: Path) -> str | None:
        try:
            _load(folder, key, processor, n)
        except ValueError as err:
            return str(err)
        return None

    def build(folder: Path) -> None:
        reports.append(_build(folder, key, content, processor, batch_size, show_progress, log, max_image_pixels))

    built = build_once(target, problem_with, build, report_damage=log.warning)
    cache = _load(target, key, processor, n)
    if built:
        cache.built = True
        cache.report = reports[0]
        log.info("content cache built: %s (%d items)", target, n - 1)
    else:
        log.info("content cache reused: %s", target)
    return cache


__all__ = ["CacheNotWritableError", "ContentCache", "build_or_load_content_cache", "cache_key"]

"""Content cache: build, reuse, invalidation, damage repair, concurrency, unwritable root."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recbole_perpeft.data.content import ItemContent, load_item_content
from recbole_perpeft.data.content_cache import (
    CacheNotWritableError,
    build_or_load_content_cache,
    cache_key,
)
from recbole_perpeft.encoders.base import ItemProcessor


class TinyProcessor(ItemProcessor):
    """A real, small processor: character-level tokenizer and PIL resize to ``size`` x ``size``."""

    def __init__(
        self,
        text_length: int = 8,
        size: int = 16,
        salt: str = "",
        images: bool = True,
        delay: float = 0.0,
    ):
        self.text_length = text_length
        self.image_shape = (3, size, size) if images else None
        self.salt = salt
        self.delay = delay
        self.tokenize_calls = 0
        self.images_processed = 0

    def tokenize(self, titles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        self.tokenize_calls += 1
        ids = np.zeros((len(titles), self.text_length), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, title in enumerate(titles):
            codes = [1] + [2 + (ord(ch) % 997) for ch in title][
                : self.text_length - 1
            ]  # 1 = BOS
            ids[row, : len(codes)] = codes
            mask[row, : len(codes)] = 1
        return ids, mask

    def process_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        assert self.image_shape is not None
        if self.delay:
            time.sleep(self.delay)
        self.images_processed += len(images)
        size = self.image_shape[1]
        arrays = [
            np.asarray(
                img.convert("RGB").resize((size, size), Image.BILINEAR),
                dtype=np.float32,
            )
            / 255.0
            for img in images
        ]
        return np.stack(arrays).transpose(0, 3, 1, 2).copy()

    def fingerprint(self) -> str:
        return f"tiny-v1-L{self.text_length}-{self.image_shape}-{self.salt}"


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 0)]


def make_dataset(root: Path, n: int = 12) -> Path:
    """A small dataset dir: items i1..in, every 4th without image, i3 with a garbage image."""
    d = root / "toy"
    (d / "images").mkdir(parents=True, exist_ok=True)
    lines = ["item_id:token\ttitle:token_seq\timage:token"]
    for k in range(1, n + 1):
        image = ""
        if k % 4 != 0:
            image = f"i{k}.jpg"
            Image.new("RGB", (20 + k, 24), COLOURS[k % 4]).save(
                d / "images" / image, format="JPEG", quality=95
            )
        lines.append(f"i{k}\tTitle number {k}\t{image}")
    (d / "images" / "i3.jpg").write_bytes(b"\xff\xd8 definitely not a full jpeg")
    (d / "toy.item").write_text("\n".join(lines) + "\n")
    return d


def load(d: Path, n: int = 12) -> ItemContent:
    return load_item_content(d, "toy", ["[PAD]"] + [f"i{k}" for k in range(1, n + 1)])


def test_build_then_reuse(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    content = load(make_dataset(tmp_path))
    proc = TinyProcessor()
    with caplog.at_level(logging.INFO):
        cache = build_or_load_content_cache(
            content, proc, tmp_path / "cache", show_progress=False, batch_size=5
        )
    assert cache.built and "content cache built" in caplog.text
    assert proc.images_processed == 8  # 9 images listed, 1 corrupt
    t = cache.tensors
    n = len(content)
    assert t["input_ids"].shape == (n, 8) and t["input_ids"].dtype == torch.int64
    assert t["attention_mask"].dtype == torch.int64
    assert (
        t["pixel_values"].shape == (n, 3, 16, 16)
        and t["pixel_values"].dtype == torch.float16
    )
    assert t["has_title"].dtype == torch.bool and t["has_image"].dtype == torch.bool
    # i3's image is undecodable: found while building, flagged and counted
    assert not t["has_image"][3] and content.has_image[3]
    assert cache.report["image_corrupt"] == 1
    assert t["has_image"].tolist() == [False] + [
        k % 4 != 0 and k != 3 for k in range(1, 13)
    ]
    # the stored arrays are what the processor produces (float16 rounding aside)
    direct = proc.process_images([Image.open(content.image_paths[1])])
    assert torch.allclose(
        t["pixel_values"][1].float(), torch.from_numpy(direct[0]), atol=1e-3
    )
    ids, _ = proc.tokenize([content.titles[5]])
    assert t["input_ids"][5].tolist() == ids[0].tolist()
    assert float(t["pixel_values"][4].abs().sum()) == 0.0  # no image -> zero row

    fresh = TinyProcessor()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = build_or_load_content_cache(
            load(tmp_path / "toy"), fresh, tmp_path / "cache", show_progress=False
        )
    assert not again.built and again.key == cache.key and "reused" in caplog.text
    assert fresh.tokenize_calls == 0 and fresh.images_processed == 0
    assert again.report["image_corrupt"] == 1  # the build's findings survive a reuse
    assert torch.equal(again.tensors["pixel_values"], t["pixel_values"])
    # copy-on-write map: an in-place write changes memory, never the file
    again.tensors["pixel_values"][1].zero_()
    third = build_or_load_content_cache(
        load(tmp_path / "toy"), TinyProcessor(), tmp_path / "cache", show_progress=False
    )
    assert (
        torch.equal(third.tensors["pixel_values"][1], t["pixel_values"][1])
        and float(t["pixel_values"][1].abs().sum()) > 0
    )


def test_invalidation(tmp_path: Path) -> None:
    d = make_dataset(tmp_path)
    root = tmp_path / "cache"
    base = build_or_load_content_cache(
        load(d), TinyProcessor(), root, show_progress=False
    )
    other_proc = build_or_load_content_cache(
        load(d), TinyProcessor(salt="v2"), root, show_progress=False
    )
    assert other_proc.built and other_proc.key != base.key
    content = load(d)
    content.titles[2] = "A different title"
    changed_title = build_or_load_content_cache(
        content, TinyProcessor(), root, show_progress=False
    )
    assert changed_title.built and changed_title.key not in (base.key, other_proc.key)
    # an image rewritten in place changes size/mtime -> new key
    img = d / "images" / "i1.jpg"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(img, format="JPEG")
    os.utime(img, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache_key(load(d), TinyProcessor()) != base.key
    # the text length is part of the processor fingerprint here, and of the key in any case
    assert cache_key(load(d), TinyProcessor(text_length=9)) != cache_key(
        load(d), TinyProcessor()
    )


def test_text_only_processor(tmp_path: Path) -> None:
    cache = build_or_load_content_cache(
        load(make_dataset(tmp_path)),
        TinyProcessor(images=False),
        tmp_path / "c",
        show_progress=False,
    )
    assert (
        "pixel_values" not in cache.tensors
        and not (cache.path / "pixel_values.npy").exists()
    )
    assert (
        cache.tensors["has_image"].tolist() == load(tmp_path / "toy").has_image.tolist()
    )


@pytest.mark.parametrize("damage", ["truncate", "delete", "meta", "shape"])
def test_damaged_cache_is_rebuilt(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_dataset(tmp_path)
    root = tmp_path / "cache"
    first = build_or_load_content_cache(
        load(d), TinyProcessor(), root, show_progress=False
    )
    reference = first.tensors["pixel_values"].clone()
    del first
    target = root / cache_key(load(d), TinyProcessor())
    if damage == "truncate":
        f = target / "pixel_values.npy"
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "delete":
        (target / "has_image.npy").unlink()
    elif damage == "meta":
        (target / "meta.json").write_text("{not json")
    else:
        np.save(target / "input_ids.npy", np.zeros((13, 3), dtype=np.int64))
    proc = TinyProcessor()
    with caplog.at_level(logging.WARNING):
        again = build_or_load_content_cache(load(d), proc, root, show_progress=False)
    assert again.built and proc.images_processed == 8
    assert "damaged" in caplog.text
    assert torch.equal(again.tensors["pixel_values"], reference)
    assert again.tensors["input_ids"].shape == (13, 8)
    assert [p.name for p in root.iterdir() if p.is_dir()] == [
        again.key
    ]  # no trash, no temp left


def _concurrent_worker(dataset_dir: str, cache_root: str) -> tuple[str, bool, int]:
    content = load(Path(dataset_dir))
    proc = TinyProcessor(delay=0.3)  # widen the build so the two processes overlap
    cache = build_or_load_content_cache(
        content, proc, Path(cache_root), show_progress=False, batch_size=2
    )
    return cache.key, cache.built, int(cache.tensors["has_image"].sum())


def test_concurrent_build_from_two_processes(tmp_path: Path) -> None:
    d = make_dataset(tmp_path)
    root = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_concurrent_worker, [(str(d), str(root))] * 2)
    keys = {r[0] for r in results}
    assert len(keys) == 1
    assert sorted(r[1] for r in results) == [
        False,
        True,
    ]  # one built, the other waited and reused
    assert {r[2] for r in results} == {8}
    dirs = [p.name for p in root.iterdir() if p.is_dir()]
    assert dirs == [keys.pop()]
    meta = json.loads((root / dirs[0] / "meta.json").read_text())
    assert meta["arrays"]["pixel_values"]["shape"] == [13, 3, 16, 16]


def test_unwritable_cache_root(tmp_path: Path) -> None:
    content = load(make_dataset(tmp_path))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="a_file") as info:
        build_or_load_content_cache(
            content, TinyProcessor(), blocker / "cache", show_progress=False
        )
    assert isinstance(info.value, CacheNotWritableError)
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(CacheNotWritableError, match="ro"):
                build_or_load_content_cache(
                    content, TinyProcessor(), ro, show_progress=False
                )
        finally:
            ro.chmod(0o700)


def test_existing_cache_served_from_read_only_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make_dataset(tmp_path)
    root = tmp_path / "cache"
    build_or_load_content_cache(load(d), TinyProcessor(), root, show_progress=False)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a valid cache must be served without writing or locking")

    monkeypatch.setattr("recbole_perpeft.cache.ensure_writable", refuse)
    proc = TinyProcessor()
    cache = build_or_load_content_cache(load(d), proc, root, show_progress=False)
    assert not cache.built and proc.tokenize_calls == 0


def _with_images(root: Path, images: dict[str, Path | None]) -> ItemContent:
    """A content of items ``i1..`` whose images are the given files (``None``: no image)."""
    d = root / "capped"
    (d / "images").mkdir(parents=True, exist_ok=True)
    lines = ["item_id:token\ttitle:token_seq\timage:token"]
    for item, source in images.items():
        name = ""
        if source is not None:
            name = source.name
            if source.parent != d / "images":
                source.replace(d / "images" / name)
        lines.append(f"{item}\tTitle {item}\t{name}")
    (d / "capped.item").write_text("\n".join(lines) + "\n")
    return load_item_content(d, "capped", ["[PAD]", *images])


def test_a_decompression_bomb_is_refused_from_its_header_and_counted(tmp_path, caplog):
    from benchmarks.image_bomb import write_blank_png

    small = tmp_path / "small.jpg"
    Image.new("RGB", (30, 20), (10, 200, 30)).save(small, format="JPEG")
    bomb = write_blank_png(tmp_path / "bomb.png", 13000, 13000)  # 20 KB, 507 MB as RGB
    assert bomb.stat().st_size < 100_000
    content = _with_images(tmp_path, {"i1": small, "i2": bomb, "i3": None})
    assert content.has_image.tolist() == [False, True, True, False]  # found by the cache, not the reader
    processor = TinyProcessor()
    with caplog.at_level(logging.WARNING):
        cache = build_or_load_content_cache(content, processor, tmp_path / "cache", show_progress=False)
    assert processor.images_processed == 1  # the bomb never reached the processor
    assert cache.tensors["has_image"].tolist() == [False, True, False, False]
    assert cache.report["image_too_many_pixels"] == 1 and cache.report["image_too_many_pixels_examples"] == ["i2"]
    assert cache.report["image_corrupt"] == 0 and cache.report["n_with_image"] == 1
    assert "more than max_image_pixels=40000000" in caplog.text and "i2" in caplog.text


def test_the_pixel_cap_is_configurable_and_part_of_the_cache_key(tmp_path):
    from recbole_perpeft.errors import ConfigError

    picture = tmp_path / "p.png"
    Image.new("RGB", (200, 100), (1, 2, 3)).save(picture)  # 20,000 pixels
    content = _with_images(tmp_path, {"i1": picture})
    processor = TinyProcessor()
    strict = build_or_load_content_cache(
        content, processor, tmp_path / "cache", show_progress=False, max_image_pixels=19_999
    )
    assert strict.report["image_too_many_pixels"] == 1 and not strict.tensors["has_image"][1]
    lenient = build_or_load_content_cache(
        content, processor, tmp_path / "cache", show_progress=False, max_image_pixels=20_000
    )
    assert lenient.key != strict.key and lenient.built and bool(lenient.tensors["has_image"][1])
    assert cache_key(content, processor, 20_000) == lenient.key
    for bad in (0, -5, "many", 1.5):
        with pytest.raises(ConfigError, match="max_image_pixels must be a positive integer"):
            build_or_load_content_cache(content, processor, tmp_path / "cache", max_image_pixels=bad)


def test_large_allowed_images_are_processed_in_several_calls(tmp_path, monkeypatch):
    import recbole_perpeft.data.content_cache as content_cache

    monkeypatch.setattr(content_cache, "_PIXEL_BUDGET", 5_000)  # 2 images of 3,000 pixels each
    sources = {}
    for k in range(1, 6):
        sources[f"i{k}"] = tmp_path / f"i{k}.png"
        Image.new("RGB", (60, 50), COLOURS[k % 4]).save(sources[f"i{k}"])
    content = _with_images(tmp_path, sources)
    calls: list[int] = []
    processor = TinyProcessor()
    original = processor.process_images
    monkeypatch.setattr(processor, "process_images", lambda images: calls.append(len(images)) or original(images))
    cache = build_or_load_content_cache(content, processor, tmp_path / "cache", show_progress=False)
    assert calls == [2, 2, 1]
    expected = original([Image.open(content.image_paths[k]) for k in range(1, 6)])
    assert torch.allclose(cache.tensors["pixel_values"][1:].float(), torch.from_numpy(expected), atol=1e-3)

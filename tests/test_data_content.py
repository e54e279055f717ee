"""load_item_content: alignment with internal ids and every kind of bad input counted."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recbole_perpeft.data.content import (
    clean_title,
    is_safe_relative_path,
    load_item_content,
    write_inter_file,
    write_item_file,
)
from recbole_perpeft.errors import DataFileError


def _jpeg(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="JPEG")


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    d = tmp_path / "messy"
    images = d / "images"
    _jpeg(images / "good.jpg")
    _jpeg(images / "sub" / "nested.jpg")
    (images / "empty.jpg").write_bytes(b"")
    (images / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    _jpeg(tmp_path / "outside.jpg")
    os.symlink(tmp_path / "outside.jpg", images / "link.jpg")
    _write(
        d / "messy.item",
        [
            "item_id:token\ttitle:token_seq\timage:token\tprice:float",
            "A\tGood item\tgood.jpg\t1.0",
            "B\t\tgood.jpg\t1.0",  # no title
            "C\tNo image\t\t1.0",  # no image
            "D\tMissing file\tnope.jpg\t1.0",  # image file missing
            "E\tEscapes\t../outside.jpg\t1.0",  # unsafe
            "F\tAbsolute\t/etc/passwd\t1.0",  # unsafe
            "G\tOdd chars\tgo od.jpg\t1.0",  # unsafe (space)
            "H\tSymlink out\tlink.jpg\t1.0",  # unsafe (resolves outside)
            "A\tSecond A\tgood.jpg\t1.0",  # duplicate, first wins
            "I\ttoo few columns",  # malformed
            "J\tx\ty\tz\textra",  # malformed
            "K\tEmpty image file\tempty.jpg\t1.0",  # corrupt (size 0)
            "L\tGarbage image\tgarbage.jpg\t1.0",  # corrupt only with verify_images
            "M\tNested ok\tsub/nested.jpg\t1.0",
            "N\tTitle with\rcarriage\treturn.jpg\t1.0",  # stray CR is part of the title
            "UNUSED\tNot in the interactions\tgood.jpg\t1.0",
        ],
    )
    return d


RAW = ["[PAD]", "A", "B", "C", "D", "E", "F", "G", "H", "I", "K", "L", "M", "Z"]


def test_counts_and_masks(messy: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        content = load_item_content(messy, "messy", RAW)
    r = content.report
    assert len(content) == len(RAW)
    # padding row
    assert content.titles[0] == "" and content.image_paths[0] is None
    assert not content.has_title[0] and not content.has_image[0]
    idx = {raw: i for i, raw in enumerate(RAW)}
    assert content.titles[idx["A"]] == "Good item"  # first of the duplicates wins
    assert r["duplicate_item_ids"] == 1
    assert r["malformed_lines"] == 2
    assert r["missing_from_item_file"] == 2  # I (its line is malformed) and Z
    assert r["unsafe_image_path"] == 4  # E, F, G, H
    assert r["image_missing"] == 1  # D
    assert r["image_corrupt"] == 1  # K (empty file); L passes without verify
    assert r["unused_item_rows"] == 2  # UNUSED and N
    expected_image = {"A", "B", "L", "M"}
    assert {RAW[i] for i in np.flatnonzero(content.has_image)} == expected_image
    expected_title = {"A", "C", "D", "E", "F", "G", "H", "K", "L", "M"}
    assert {RAW[i] for i in np.flatnonzero(content.has_title)} == expected_title
    # no_image counts every item of the interactions without a usable image
    assert r["no_image"] == len(RAW) - 1 - len(expected_image)
    assert r["no_title"] == len(RAW) - 1 - len(expected_title)
    for i, path in enumerate(content.image_paths):
        assert (path is not None) == bool(content.has_image[i])
        if path is not None:
            assert Path(path).is_absolute()
            assert Path(path).resolve().is_relative_to((messy / "images").resolve())
    text = caplog.text
    for words in (
        "unsafe image path",
        "duplicate item ids",
        "malformed lines",
        "missing from item file",
    ):
        assert words in text


def test_verify_images_catches_garbage(messy: Path) -> None:
    content = load_item_content(messy, "messy", RAW, verify_images=True)
    assert content.report["image_corrupt"] == 2  # K and L
    assert not content.has_image[RAW.index("L")]


def test_custom_fields_crlf_and_missing_columns(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    _jpeg(d / "pics" / "x.jpg")
    (d / "ds.item").write_bytes(
        b"item_id:token\tname:token_seq\tpic:token\r\n1\tHello\tx.jpg\r\n2\tWorld\t\r\n"
    )
    content = load_item_content(
        d,
        "ds",
        ["[PAD]", "1", "2"],
        title_field="name",
        image_field="pic",
        image_dir="pics",
    )
    assert content.titles == ["", "Hello", "World"]
    assert content.has_image.tolist() == [False, True, False]
    # ml-100k style: no image column at all -> every item without image, one warning
    ml = load_item_content(
        d, "ds", ["[PAD]", "1"], title_field="name", image_field="absent"
    )
    assert ml.has_image.tolist() == [False, False] and ml.report["no_image"] == 1


def test_missing_item_file_and_missing_id_column(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="ds.item"):
        load_item_content(tmp_path, "ds", ["[PAD]"])
    _write(tmp_path / "ds.item", ["id:token\ttitle:token_seq", "1\tx"])
    with pytest.raises(ValueError, match="item_id"):
        load_item_content(tmp_path, "ds", ["[PAD]", "1"])


def test_writers_round_trip(tmp_path: Path) -> None:
    write_item_file(
        tmp_path / "w.item", [("a", "tab\there\nnew\rline", "a.jpg"), ("b", "", "")]
    )
    write_inter_file(
        tmp_path / "w.inter", [("u1", "a", 1600000000.0), ("u1", "b", 1600000000.5)]
    )
    _jpeg(tmp_path / "images" / "a.jpg")
    content = load_item_content(tmp_path, "w", ["[PAD]", "a", "b"])
    assert content.titles[1] == "tab here new line"
    assert content.has_title.tolist() == [False, True, False]
    assert (tmp_path / "w.inter").read_text().splitlines() == [
        "user_id:token\titem_id:token\ttimestamp:float",
        "u1\ta\t1600000000",
        "u1\tb\t1600000000.5",
    ]
    with pytest.raises(ValueError):
        write_item_file(tmp_path / "bad.item", [("a\tb", "t", "")])


@pytest.mark.parametrize(
    ("rel", "ok"),
    [("a.jpg", True), ("sub/a-b_c.jpg", True), ("../a.jpg", False), ("/a.jpg", False), ("a/../b.jpg", False),
     ("", False), ("a b.jpg", False), ("a\\b.jpg", False), ("./a.jpg", False), ("a//b.jpg", False)],
)  # fmt: skip
def test_safe_relative_path(rel: str, ok: bool) -> None:
    assert is_safe_relative_path(rel) is ok


def test_clean_title() -> None:
    assert clean_title(" a\tb\n c\r d ") == "a b c d"

"""perpeft-release converter: round trip on a fixture release, and refusal without --trust-pickles."""

from __future__ import annotations

import os
import pickle
from itertools import pairwise
from pathlib import Path

import pytest
from PIL import Image

from recbole_perpeft.data.content import load_item_content
from recbole_perpeft.data.convert import main

# user -> item ids (1-based) in time order; lines are interleaved across users in the file
SEQUENCES = {1: [3, 1, 2, 1], 2: [2, 4, 5], 3: [1, 3]}


@pytest.fixture
def release(tmp_path: Path) -> Path:
    src = tmp_path / "release"
    (src / "toy_images").mkdir(parents=True)
    lines = []
    for step in range(4):
        for user, seq in SEQUENCES.items():
            if step < len(seq):
                lines.append(f"{user} {seq[step]}")
    lines.insert(2, "this is not a pair")
    (src / "toy_final.txt").write_text("\n".join(lines) + "\n")
    # mixed int and str keys, as different dumps of the release have them; 5 is missing
    item2id = {1: "B000AAA111", "2": "B000BBB222", 3: "0316015849", 4: "B000DDD444"}
    texts = {
        "B000AAA111": "First\ttoy",
        "B000BBB222": "Second toy",
        "0316015849": "",
        "UNUSED": "x",
    }
    with open(src / "toy_item2id_final.pickle", "wb") as fh:
        pickle.dump(item2id, fh)
    with open(src / "toy_texts_final.pickle", "wb") as fh:
        pickle.dump(texts, fh)
    for asin, colour in (("B000AAA111", (255, 0, 0)), ("0316015849", (0, 0, 255))):
        Image.new("RGB", (10, 10), colour).save(
            src / "toy_images" / f"{asin}.jpg", format="JPEG"
        )
    return src



def convert_trusted(release: Path, name: str, out: Path, *extra: str) -> int:
    """Run the converter on ``release`` with pickles trusted; its exit code."""
    return main(["perpeft-release", str(release), name, *extra, "--out", str(out), "--trust-pickles"])


def test_refuses_pickles_without_flag(
    release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    assert main(["perpeft-release", str(release), "toy", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (
        "--trust-pickles" in err and "arbitrary code" in err and "Traceback" not in err
    )
    assert not out.exists()


def test_round_trip(
    release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    assert convert_trusted(release, "toy", out) == 0
    summary = capsys.readouterr().out
    d = out / "toy"
    asin = {
        1: "B000AAA111",
        2: "B000BBB222",
        3: "0316015849",
        4: "B000DDD444",
        5: "id_5",
    }
    rows = [line.split("\t") for line in (d / "toy.inter").read_text().splitlines()[1:]]
    assert len(rows) == sum(map(len, SEQUENCES.values()))
    for user, seq in SEQUENCES.items():
        mine = [(i, float(t)) for u, i, t in rows if u == str(user)]
        assert [i for i, _ in mine] == [asin[k] for k in seq]  # order kept
        assert all(
            a[1] < b[1] for a, b in pairwise(mine)
        )  # strictly increasing synthetic time
    items = {
        line.split("\t")[0]: line.split("\t")[1:]
        for line in (d / "toy.item").read_text().splitlines()[1:]
    }
    assert items == {
        "B000AAA111": ["First toy", "B000AAA111.jpg"],
        "B000BBB222": ["Second toy", ""],
        "0316015849": ["", "0316015849.jpg"],
        "B000DDD444": ["", ""],
        "id_5": ["", ""],
    }
    linked = d / "images" / "B000AAA111.jpg"
    assert (
        linked.read_bytes() == (release / "toy_images" / "B000AAA111.jpg").read_bytes()
    )
    assert (
        os.stat(linked).st_ino
        == os.stat(release / "toy_images" / "B000AAA111.jpg").st_ino
    )  # hard link
    for words in (
        "users  3",
        "items  5",
        "interactions  9",
        "lines malformed  1",
        "item ids missing from item2id  1",
    ):
        assert " ".join(words.split()) in " ".join(summary.split()), summary
    assert "items without title 3" in " ".join(summary.split())
    assert "items without image 3" in " ".join(summary.split())
    assert "--dataset=toy" in summary

    content = load_item_content(d, "toy", ["[PAD]", *sorted(items)])
    assert int(content.has_image.sum()) == 2 and int(content.has_title.sum()) == 2

    # a second run reuses the images already in place
    assert convert_trusted(release, "toy", out) == 0
    assert "images already present 2" in " ".join(capsys.readouterr().out.split())


def test_release_name_and_bad_pickle(
    release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    assert convert_trusted(release, "renamed", out, "--release-name", "toy") == 0
    assert (out / "renamed" / "renamed.inter").is_file()
    (release / "toy_texts_final.pickle").write_bytes(b"not a pickle")
    capsys.readouterr()
    assert convert_trusted(release, "toy", out) == 2
    assert "cannot unpickle" in capsys.readouterr().err
    assert convert_trusted(tmp_path / "nowhere", "toy", out) == 2
    assert "does not exist" in capsys.readouterr().err

"""mmdemo: deterministic bytes, safe concurrent generation, and recoverable latent user groups."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recbole_perpeft.data.content import load_item_content
from recbole_perpeft.data.mmdemo import CATEGORIES, PALETTE, generate_mmdemo

SMALL = {"n_users": 120, "n_items": 128, "max_len": 12}


def _files(d: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = _files(generate_mmdemo(tmp_path / "a" / "mmdemo", seed=7, **SMALL))
    b = _files(generate_mmdemo(tmp_path / "b" / "mmdemo", seed=7, **SMALL))
    c = _files(generate_mmdemo(tmp_path / "c" / "mmdemo", seed=8, **SMALL))
    assert a == b
    assert a.keys() == c.keys()
    assert (
        a["mmdemo.inter"] != c["mmdemo.inter"]
        and a["images/i0001.jpg"] != c["images/i0001.jpg"]
    )
    assert {
        "mmdemo.inter",
        "mmdemo.item",
        "groups.tsv",
        "README.txt",
        "item_aspects.tsv",
    } <= a.keys()
    assert sum(k.startswith("images/") for k in a) == 128


def test_reuse_and_conflict(tmp_path: Path) -> None:
    d = generate_mmdemo(tmp_path / "mmdemo", seed=1, **SMALL)
    stamp = (d / "mmdemo.inter").stat().st_mtime_ns
    assert generate_mmdemo(tmp_path / "mmdemo", seed=1, **SMALL) == d
    assert (d / "mmdemo.inter").stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(FileExistsError, match="parameters"):
        generate_mmdemo(tmp_path / "mmdemo", seed=2, **SMALL)
    with pytest.raises(ValueError):
        generate_mmdemo(tmp_path / "bad", n_colours=99)


def _gen(out: str) -> str:
    return str(generate_mmdemo(Path(out), seed=3, **SMALL))


def test_concurrent_generation(tmp_path: Path) -> None:
    target = tmp_path / "mmdemo"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_gen, [str(target)] * 2)
    assert results == [str(target)] * 2
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [
        "mmdemo"
    ]  # no temp folder left
    assert _files(target) == _files(
        generate_mmdemo(tmp_path / "x" / "mmdemo", seed=3, **SMALL)
    )


def _image_colour(path: Path) -> str:
    """The palette colour covering most pixels of the image (what a vision model would see)."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).reshape(
        -1, 3
    )
    palette = np.array(list(PALETTE.values()), dtype=np.float32)
    dist = np.linalg.norm(pixels[:, None, :] - palette[None], axis=2)
    near = dist.min(axis=1) < 60
    votes = np.bincount(dist.argmin(axis=1)[near], minlength=len(palette))
    return list(PALETTE)[int(votes.argmax())]


def test_latent_groups_are_recoverable_from_the_data(tmp_path: Path) -> None:
    d = generate_mmdemo(tmp_path / "mmdemo")  # the default configuration, as shipped
    items = [
        line.split("\t") for line in (d / "mmdemo.item").read_text().splitlines()[1:]
    ]
    assert len(items) == 800
    colour = {item: _image_colour(d / "images" / image) for item, _, image in items}
    category = {}
    for item, title, _ in items:
        words = [w for w in title.lower().split() if w in CATEGORIES]
        assert len(words) == 1, title  # exactly one category word per title
        assert not set(title.lower().split()) & set(PALETTE), (
            title
        )  # no colour word in titles
        category[item] = words[0]
    # the image really carries the colour of the ground truth
    truth = {
        r[0]: r[1:]
        for r in (
            line.split("\t")
            for line in (d / "item_aspects.tsv").read_text().splitlines()[1:]
        )
    }
    assert sum(colour[i] == truth[i][0] for i in colour) == 800
    assert sum(category[i] == truth[i][1] for i in category) == 800

    groups = {
        r[0]: (r[1], r[2])
        for r in (
            line.split("\t") for line in (d / "groups.tsv").read_text().splitlines()[1:]
        )
    }
    drivers = Counter(g for g, _ in groups.values())
    assert (
        drivers["colour"] == 900
        and drivers["category"] == 900
        and drivers["popularity"] == 200
    )
    seqs: dict[str, list[str]] = {}
    for line in (d / "mmdemo.inter").read_text().splitlines()[1:]:
        user, item, _ = line.split("\t")
        seqs.setdefault(user, []).append(item)
    assert len(seqs) == 2000 and all(8 <= len(s) <= 25 for s in seqs.values())
    assert all(len(set(s)) == len(s) for s in seqs.values())

    share = {
        ("colour", "colour"): [],
        ("colour", "category"): [],
        ("category", "category"): [],
        ("category", "colour"): [],
    }
    for user, seq in seqs.items():
        driver, value = groups[user]
        if driver == "popularity":
            continue
        top_colour = Counter(colour[i] for i in seq).most_common(1)[0]
        top_cat = Counter(category[i] for i in seq).most_common(1)[0]
        share[(driver, "colour")].append(top_colour[1] / len(seq))
        share[(driver, "category")].append(top_cat[1] / len(seq))
        if driver == "colour":
            assert top_colour[0] == value
        else:
            assert top_cat[0] == value
    # driven aspect: ~85 % of a user's items share it; the other aspect stays near chance (1/8)
    assert (
        np.mean(share[("colour", "colour")]) > 0.75
        and np.mean(share[("colour", "category")]) < 0.4
    )
    assert (
        np.mean(share[("category", "category")]) > 0.75
        and np.mean(share[("category", "colour")]) < 0.4
    )
    # and the files load as item content
    content = load_item_content(
        d, "mmdemo", ["[PAD]", *sorted(colour)], verify_images=True
    )
    assert content.has_image.sum() == 800 and content.has_title.sum() == 800

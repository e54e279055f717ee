"""mmdemo: deterministic bytes, safe concurrent generation, and recoverable latent user segments."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recbole_perpeft.data.content import load_item_content
from recbole_perpeft.data.mmdemo import CATEGORIES, DOMAINS, PALETTE, SHAPES, generate_mmdemo

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
        generate_mmdemo(tmp_path / "bad", n_segments=99)


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


def _column(path: Path) -> dict[str, list[str]]:
    """A TSV ground-truth file as {first column: other columns}."""
    rows = (line.split("\t") for line in path.read_text().splitlines()[1:])
    return {r[0]: r[1:] for r in rows}


def test_latent_segments_are_recoverable_from_the_data(tmp_path: Path) -> None:
    d = generate_mmdemo(tmp_path / "mmdemo")  # the default configuration, as shipped
    items = [line.split("\t") for line in (d / "mmdemo.item").read_text().splitlines()[1:]]
    assert len(items) == 3200
    truth = _column(d / "item_aspects.tsv")  # domain, category, colour, shape, pattern, brand, adjective
    domain_of_word = {word: domain for domain, words in DOMAINS.items() for word in words}
    for item, title, _image in items:
        words = title.split()
        categories = [w for w in words if w in CATEGORIES]
        assert categories == [truth[item][1]], title  # exactly one category word: the domain's
        assert domain_of_word[categories[0]] == truth[item][0]
        assert words[:3] == [truth[item][1], truth[item][5], truth[item][6]]  # category, brand, adjective
        assert not {w.lower() for w in words} & (set(PALETTE) | set(SHAPES)), title  # image-only aspects
    # the image really carries the colour of the ground truth
    assert all(_image_colour(d / "images" / image) == truth[item][2] for item, _, image in items[:400])

    segments = _column(d / "groups.tsv")  # segment (domain), aspect, value
    assert Counter(s for s, _, _ in segments.values()) == {name: 500 for name in DOMAINS}
    seqs: dict[str, list[str]] = {}
    for line in (d / "mmdemo.inter").read_text().splitlines()[1:]:
        user, item, _ = line.split("\t")
        seqs.setdefault(user, []).append(item)
    assert len(seqs) == 2000 and all(6 <= len(s) <= 20 for s in seqs.values())
    assert all(len(set(s)) == len(s) for s in seqs.values())
    column = {"colour": 2, "shape": 3, "brand": 5, "adjective": 6}
    in_domain, on_aspect, off_aspect = [], [], []
    for user, seq in seqs.items():
        domain, aspect, value = segments[user]
        in_domain.append(np.mean([truth[i][0] == domain for i in seq]))
        on_aspect.append(np.mean([truth[i][column[aspect]] == value for i in seq]))
        # another aspect of the same modality family stays near chance
        other = {"colour": "brand", "brand": "colour", "shape": "adjective", "adjective": "shape"}[aspect]
        top_other = Counter(truth[i][column[other]] for i in seq).most_common(1)[0][1]
        off_aspect.append(top_other / len(seq))
    # ~90 % of a user's items are in their domain with their preferred value; other aspects ~ chance
    assert np.mean(in_domain) > 0.85 and np.mean(on_aspect) > 0.85
    assert np.mean(off_aspect) < 0.45
    # and the files load as item content
    content = load_item_content(d, "mmdemo", ["[PAD]", *sorted(truth)], verify_images=True)
    assert content.has_image.sum() == 3200 and content.has_title.sum() == 3200

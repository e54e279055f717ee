"""``mmdemo``: a small synthetic multimodal dataset in which user groups follow different aspects.

Every item has a *colour* that only its image shows and a *category* word that only its title
shows (plus a shape, a background pattern, a brand and an adjective as noise). Users come in
latent groups: colour users pick items of one colour (any category), category users pick items
of one category (any colour), and a small popularity group picks popular items. A user-blind item
encoder must serve both views with one projection, while per-group encoders can specialise: the
situation PerPEFT is built for, small enough to train on a CPU in minutes.

Generation is deterministic in the seed (same seed -> byte-identical files on the same library
versions: fixed JPEG settings, no clock time) and atomic (temporary folder + rename under a file
lock, so two processes generating at once are safe).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw

from recbole_perpeft.data.content import (
    atomic_write_text,
    write_inter_file,
    write_item_file,
)

MMDEMO_VERSION = 1
_GENERATOR_FILE = "generator.json"
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 165, 45),
    "blue": (35, 65, 220),
    "yellow": (240, 210, 25),
    "magenta": (205, 40, 200),
    "cyan": (25, 200, 210),
    "orange": (245, 135, 20),
    "black": (25, 25, 25),
}
CATEGORIES = (
    "lamp", "mug", "backpack", "sneaker", "clock", "guitar", "blanket", "kettle",
    "helmet", "notebook", "umbrella", "teapot",
)  # fmt: skip
SHAPES = ("circle", "square", "triangle", "diamond")
PATTERNS = ("plain", "stripes", "grid", "dots")
# Title noise: deliberately free of colour words, so colour lives in the image only.
_BRANDS = (
    "Norvik",
    "Altena",
    "Brisco",
    "Calder",
    "Dunmore",
    "Elko",
    "Fenwick",
    "Galen",
)
_ADJECTIVES = (
    "Classic",
    "Compact",
    "Deluxe",
    "Portable",
    "Modern",
    "Vintage",
    "Premium",
    "Essential",
)
_BASE_TIME = 1_577_836_800  # 2020-01-01, a fixed origin: no clock time in the files
_JPEG_QUALITY = 90


def _draw_item(
    rng: np.random.Generator, colour: str, shape: str, pattern: str, size: int
) -> bytes:
    """One JPEG: a coloured shape on a light, patterned background (colour = the signal)."""
    grey = int(rng.integers(205, 246))
    img = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    line = max(1, size // 32)
    tone = (grey - 40,) * 3
    step = size // 8
    if pattern == "stripes":
        for x in range(int(rng.integers(0, step)), size, step):
            draw.line([(x, 0), (x, size)], fill=tone, width=line)
    elif pattern == "grid":
        for v in range(int(rng.integers(0, step)), size, step):
            draw.line([(v, 0), (v, size)], fill=tone, width=line)
            draw.line([(0, v), (size, v)], fill=tone, width=line)
    elif pattern == "dots":
        for x in range(step // 2, size, step):
            for y in range(step // 2, size, step):
                draw.ellipse([x - line, y - line, x + line, y + line], fill=tone)
    base = np.array(PALETTE[colour])
    fill = tuple(int(v) for v in np.clip(base + rng.integers(-15, 16, size=3), 0, 255))
    extent = int(rng.integers(int(size * 0.55), int(size * 0.8)))
    x0 = int(rng.integers(2, size - extent - 1))
    y0 = int(rng.integers(2, size - extent - 1))
    x1, y1 = x0 + extent, y0 + extent
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=fill)
    else:
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    buf = io.BytesIO()
    # Fixed encoder settings (no optimise pass, no EXIF): identical bytes for identical input.
    img.save(
        buf, format="JPEG", quality=_JPEG_QUALITY, optimize=False, progressive=False
    )
    return buf.getvalue()


def _params(
    seed: int,
    n_users: int,
    n_items: int,
    n_colours: int,
    n_categories: int,
    min_len: int,
    max_len: int,
    noise: float,
    colour_share: float,
    category_share: float,
    image_size: int,
) -> dict[str, float | int]:
    if not 1 <= n_colours <= len(PALETTE):
        raise ValueError(f"n_colours must be in 1..{len(PALETTE)}")
    if not 1 <= n_categories <= len(CATEGORIES):
        raise ValueError(f"n_categories must be in 1..{len(CATEGORIES)}")
    if n_items < n_colours * n_categories:
        raise ValueError("n_items must be at least n_colours * n_categories")
    if not 1 <= min_len <= max_len or max_len > n_items // max(n_colours, n_categories):
        raise ValueError("need 1 <= min_len <= max_len <= items per colour/category")
    if (
        not 0.0 <= noise <= 1.0
        or colour_share < 0
        or category_share < 0
        or colour_share + category_share > 1
    ):
        raise ValueError(
            "noise must be in [0, 1]; colour_share + category_share in [0, 1]"
        )
    if n_users < 1 or image_size < 16:
        raise ValueError("n_users must be >= 1 and image_size >= 16")
    return {
        "version": MMDEMO_VERSION,
        "seed": seed,
        "n_users": n_users,
        "n_items": n_items,
        "n_colours": n_colours,
        "n_categories": n_categories,
        "min_len": min_len,
        "max_len": max_len,
        "noise": noise,
        "colour_share": colour_share,
        "category_share": category_share,
        "image_size": image_size,
    }


def _generate_into(tmp: Path, name: str, p: dict[str, float | int]) -> None:
    rng = np.random.default_rng(int(p["seed"]))
    n_items, n_users = int(p["n_items"]), int(p["n_users"])
    colours = list(PALETTE)[: int(p["n_colours"])]
    categories = list(CATEGORIES[: int(p["n_categories"])])
    iw = max(4, len(str(n_items)))
    uw = max(4, len(str(n_users)))
    item_ids = [f"i{i + 1:0{iw}d}" for i in range(n_items)]
    user_ids = [f"u{u + 1:0{uw}d}" for u in range(n_users)]

    # Balanced aspects: every (colour, category) cell gets the same number of items (+-1),
    # so a colour says nothing about the category and the other way round.
    order = rng.permutation(n_items)
    item_colour = np.empty(n_items, dtype=np.int64)
    item_cat = np.empty(n_items, dtype=np.int64)
    item_colour[order] = np.arange(n_items) % len(colours)
    item_cat[order] = (np.arange(n_items) // len(colours)) % len(categories)
    item_shape = rng.integers(0, len(SHAPES), n_items)
    item_pattern = rng.integers(0, len(PATTERNS), n_items)
    popularity = rng.lognormal(0.0, 0.8, n_items)

    images_dir = tmp / "images"
    images_dir.mkdir()
    item_rows = []
    aspect_lines = ["item_id\tcolour\tcategory\tshape\tpattern"]
    for i, item in enumerate(item_ids):
        colour, cat = colours[item_colour[i]], categories[item_cat[i]]
        shape, pattern = SHAPES[item_shape[i]], PATTERNS[item_pattern[i]]
        jpeg = _draw_item(rng, colour, shape, pattern, int(p["image_size"]))
        (images_dir / f"{item}.jpg").write_bytes(jpeg)
        brand = _BRANDS[int(rng.integers(len(_BRANDS)))]
        adjective = _ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))]
        model = (
            f"{chr(ord('A') + int(rng.integers(26)))}-{int(rng.integers(100, 1000))}"
        )
        item_rows.append((item, f"{brand} {adjective} {cat} {model}", f"{item}.jpg"))
        aspect_lines.append(f"{item}\t{colour}\t{cat}\t{shape}\t{pattern}")

    n_colour_users = round(n_users * float(p["colour_share"]))
    n_cat_users = round(n_users * float(p["category_share"]))
    drivers = np.array(
        ["colour"] * n_colour_users
        + ["category"] * n_cat_users
        + ["popularity"] * (n_users - n_colour_users - n_cat_users)
    )
    drivers = drivers[rng.permutation(n_users)]
    rows: list[tuple[int, int, int, int]] = []  # (time, user, step, item)
    group_lines = ["user_id\tdriver\tvalue"]
    noise = float(p["noise"])
    for u in range(n_users):
        driver = str(drivers[u])
        if driver == "colour":
            value_idx = int(rng.integers(len(colours)))
            value = colours[value_idx]
            matching = item_colour == value_idx
        elif driver == "category":
            value_idx = int(rng.integers(len(categories)))
            value = categories[value_idx]
            matching = item_cat == value_idx
        else:
            value = "-"
            matching = np.ones(n_items, dtype=bool)
        group_lines.append(f"{user_ids[u]}\t{driver}\t{value}")
        length = int(rng.integers(int(p["min_len"]), int(p["max_len"]) + 1))
        available = np.ones(n_items, dtype=bool)
        t = _BASE_TIME + int(rng.integers(0, 180 * 86400))
        for step in range(length):
            pool = available & matching if rng.random() >= noise else available
            if not pool.any():
                pool = available
            weights = np.where(pool, popularity, 0.0)
            item = int(rng.choice(n_items, p=weights / weights.sum()))
            available[item] = (
                False  # no repeats: RecBole's full ranking excludes history anyway
            )
            rows.append((t, u, step, item))
            t += int(rng.integers(3600, 5 * 86400))
    rows.sort()  # global time order; (user, step) break ties deterministically
    write_inter_file(
        tmp / f"{name}.inter",
        [(user_ids[u], item_ids[i], float(t)) for t, u, _, i in rows],
    )
    write_item_file(tmp / f"{name}.item", item_rows)
    atomic_write_text(tmp / "groups.tsv", "\n".join(group_lines) + "\n")
    atomic_write_text(tmp / "item_aspects.tsv", "\n".join(aspect_lines) + "\n")
    counts = {
        d: int((drivers == d).sum()) for d in ("colour", "category", "popularity")
    }
    readme = f"""{name}: synthetic multimodal sequential-recommendation data (recbole-perpeft mmdemo v{MMDEMO_VERSION})

Generated by recbole_perpeft.data.mmdemo.generate_mmdemo with the parameters in {_GENERATOR_FILE}
(seed {p["seed"]}); the same seed gives the same files.

Items ({n_items}): each has a colour ({", ".join(colours)}) shown only in its 64x64-style JPEG
image (images/<item>.jpg, a coloured {"/".join(SHAPES)} on a light background with a
{"/".join(PATTERNS)} pattern), and a category word ({", ".join(categories)}) shown only in its
title ("<brand> <adjective> <category> <model>"). Colours and categories are balanced and
independent. Shape, pattern, brand and adjective are noise. Item popularity is log-normal.

Users ({n_users}): latent groups, recorded in groups.tsv (for analysis only, not for training):
  colour users ({counts["colour"]}): pick items of one colour, any category;
  category users ({counts["category"]}): pick items of one category, any colour;
  popularity users ({counts["popularity"]}): pick items by popularity only.
With probability {noise} a step ignores the driver (popularity over all items). Sequences have
{p["min_len"]}-{p["max_len"]} distinct items, time-ordered (synthetic timestamps from 2020-01-01).
item_aspects.tsv lists every item's colour, category, shape and pattern (ground truth).

Files: {name}.inter, {name}.item (RecBole atomic files), images/, groups.tsv, item_aspects.tsv.
"""
    atomic_write_text(tmp / "README.txt", readme)
    # Written last: its presence marks a complete dataset.
    atomic_write_text(
        tmp / _GENERATOR_FILE, json.dumps(p, indent=1, sort_keys=True) + "\n"
    )


def generate_mmdemo(
    out_dir: Path,
    seed: int = 2026,
    n_users: int = 2000,
    n_items: int = 800,
    n_colours: int = 8,
    n_categories: int = 8,
    min_len: int = 8,
    max_len: int = 25,
    noise: float = 0.15,
    colour_share: float = 0.45,
    category_share: float = 0.45,
    image_size: int = 64,
) -> Path:
    """Generate the dataset into ``out_dir`` (the dataset folder; files are named after it).

    Returns ``out_dir``. An existing complete dataset with the same parameters is reused; one
    with different parameters (or a foreign folder) raises ``FileExistsError``.
    """
    out_dir = Path(out_dir)
    name = out_dir.name
    params = _params(
        seed,
        n_users,
        n_items,
        n_colours,
        n_categories,
        min_len,
        max_len,
        noise,
        colour_share,
        category_share,
        image_size,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(os.fspath(out_dir.parent / f".{name}.lock")):
        if out_dir.exists():
            gen = out_dir / _GENERATOR_FILE
            try:
                existing = json.loads(gen.read_text())
            except (OSError, ValueError):
                existing = None
            if existing == params:
                return out_dir
            raise FileExistsError(
                f"{out_dir} exists but was not generated by generate_mmdemo with these parameters "
                f"(see {gen}); remove it or choose another folder"
            )
        tmp = out_dir.parent / f".{name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            _generate_into(tmp, name, params)
            os.rename(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir

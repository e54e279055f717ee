"""``mmdemo``: a small synthetic multimodal dataset in which user groups judge items differently.

Every item belongs to a *domain* (kitchen, outdoor, office, home), named by the category word that
opens its title and hinted at by the image's background tint, and has five further aspects: a
colour, a shape and a background pattern that only its image shows, and a brand and an adjective
that only its title shows.

Users come in latent segments, one per domain. A segment's users stay inside their domain and
choose by one *segment-specific* aspect: kitchen users by colour, outdoor users by brand, office
users by shape, home users by adjective (each user has one preferred value). So the same two
items are near-duplicates to one segment and unrelated to another: a user-blind item encoder has
to carry every aspect of every item in one small space, while a per-group encoder only needs its
domain's aspect; and inside a domain, only negatives from the same domain (group negatives) teach
which aspect matters. This is the situation PerPEFT is built for, small enough to train on a CPU
in minutes. At the default size (3,200 items, ~8 interactions each) the ID embeddings learn each
item's pool from co-occurrence about as well as content can tell it: an encoder given the
ground-truth aspects only ties the ID-only model (``benchmarks/mmdemo_oracle.py``). With more
items for the same users (``n_items=12800``, ~2 interactions each) the IDs starve and the content
path carries the ranking.

Generation is deterministic in the seed (same seed -> byte-identical files on the same library
versions: fixed JPEG settings, no clock time) and atomic (:func:`recbole_perpeft.cache.build_once`:
temporary folder + rename under a file lock, so two processes generating at once are safe).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from recbole_perpeft.cache import build_once
from recbole_perpeft.data.content import (
    atomic_write_text,
    write_inter_file,
    write_item_file,
)

MMDEMO_VERSION = 2
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
# Each domain is named in titles by one of its category words.
DOMAINS: dict[str, tuple[str, ...]] = {
    "kitchen": ("mug", "kettle", "teapot"),
    "outdoor": ("backpack", "helmet", "umbrella"),
    "office": ("lamp", "notebook", "clock"),
    "home": ("blanket", "cushion", "vase"),
}
# Light background tints: a domain is also visible, softly, in the image.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "kitchen": (240, 222, 196),
    "outdoor": (206, 236, 206),
    "office": (206, 222, 246),
    "home": (240, 212, 232),
}
CATEGORIES = tuple(word for words in DOMAINS.values() for word in words)
SHAPES = ("circle", "square", "triangle", "diamond")
PATTERNS = ("plain", "stripes", "grid", "dots")
# Title words: deliberately free of colour and shape words, so those live in the image only.
BRANDS = ("Norvik", "Altena", "Brisco", "Calder", "Dunmore", "Elko", "Fenwick", "Galen")
ADJECTIVES = ("Classic", "Compact", "Deluxe", "Portable", "Modern", "Vintage", "Premium", "Essential")
# The aspect each domain's users choose by (segment i <-> domain i): two image, two title aspects.
SEGMENT_ASPECTS = ("colour", "brand", "shape", "adjective")
ASPECT_VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(PALETTE),
    "brand": BRANDS,
    "shape": SHAPES,
    "adjective": ADJECTIVES,
}
_BASE_TIME = 1_577_836_800  # 2020-01-01, a fixed origin: no clock time in the files
_JPEG_QUALITY = 90


def _draw_item(
    rng: np.random.Generator, colour: str, shape: str, pattern: str, domain: str, size: int
) -> bytes:
    """One JPEG: a coloured shape on a light, patterned background tinted by the item's domain."""
    background = tuple(int(v) for v in np.clip(np.array(BACKGROUNDS[domain]) + rng.integers(-8, 9, 3), 0, 255))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    line = max(1, size // 32)
    tone = tuple(v - 40 for v in background)
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
    n_segments: int,
    min_len: int,
    max_len: int,
    noise: float,
    popularity_sigma: float,
    image_size: int,
) -> dict[str, float | int]:
    if not 1 <= n_segments <= len(DOMAINS):
        raise ValueError(f"n_segments must be in 1..{len(DOMAINS)}")
    domain_size = n_items // n_segments
    if not 1 <= min_len <= max_len or max_len > domain_size:
        raise ValueError(
            f"need 1 <= min_len <= max_len <= items per domain = {domain_size}; raise n_items or lower max_len"
        )
    if not 0.0 <= noise <= 1.0 or popularity_sigma < 0:
        raise ValueError("noise must be in [0, 1] and popularity_sigma >= 0")
    if n_users < 1 or image_size < 16:
        raise ValueError("n_users must be >= 1 and image_size >= 16")
    return {
        "version": MMDEMO_VERSION,
        "seed": seed,
        "n_users": n_users,
        "n_items": n_items,
        "n_segments": n_segments,
        "min_len": min_len,
        "max_len": max_len,
        "noise": noise,
        "popularity_sigma": popularity_sigma,
        "image_size": image_size,
    }


def _balanced(rng: np.random.Generator, n: int, n_values: int) -> np.ndarray:
    """``n`` values in ``0..n_values-1``, each used equally often (+-1), in random order."""
    return rng.permutation(np.arange(n) % n_values)


def _draw_catalogue(rng: np.random.Generator, p: dict[str, float | int]) -> dict[str, np.ndarray]:
    """The items' domains, aspects, category words, patterns and popularities (the first draws)."""
    n_items = int(p["n_items"])
    # Every aspect is balanced and drawn independently of the others, so no aspect says anything
    # about another one (a colour does not reveal a brand or a domain).
    item_domain = _balanced(rng, n_items, int(p["n_segments"]))
    aspect_of_item = {aspect: _balanced(rng, n_items, len(values)) for aspect, values in ASPECT_VALUES.items()}
    item_word = rng.integers(0, 3, n_items)
    item_pattern = _balanced(rng, n_items, len(PATTERNS))
    popularity = rng.lognormal(0.0, float(p["popularity_sigma"]), n_items)
    return {"domain": item_domain, **aspect_of_item, "word": item_word, "pattern": item_pattern,
            "popularity": popularity}


def item_ids_of(n_items: int) -> list[str]:
    """The generated item ids, "i0001" onwards (zero-padded to at least four digits)."""
    width = max(4, len(str(n_items)))
    return [f"i{i + 1:0{width}d}" for i in range(n_items)]


def item_popularity(dataset_dir: Path) -> dict[str, float]:
    """Every item's generating popularity weight, replayed from the folder's generator.json.

    For analysis (e.g. the Bayes ceiling of a ranking metric in ``benchmarks/mmdemo_ceiling.py``);
    training never sees it.
    """
    params = json.loads((Path(dataset_dir) / _GENERATOR_FILE).read_text())
    if params.get("version") != MMDEMO_VERSION:
        raise ValueError(f"{dataset_dir} was generated by mmdemo v{params.get('version')}, this is v{MMDEMO_VERSION}")
    catalogue = _draw_catalogue(np.random.default_rng(int(params["seed"])), params)
    return dict(zip(item_ids_of(int(params["n_items"])), catalogue["popularity"].tolist()))


def _generate_into(tmp: Path, name: str, p: dict[str, float | int]) -> None:
    rng = np.random.default_rng(int(p["seed"]))
    n_items, n_users, n_segments = int(p["n_items"]), int(p["n_users"]), int(p["n_segments"])
    domains = list(DOMAINS)[:n_segments]
    uw = max(4, len(str(n_users)))
    item_ids = item_ids_of(n_items)
    user_ids = [f"u{u + 1:0{uw}d}" for u in range(n_users)]

    catalogue = _draw_catalogue(rng, p)
    item_domain, item_word, item_pattern = catalogue["domain"], catalogue["word"], catalogue["pattern"]
    aspect_of_item = {aspect: catalogue[aspect] for aspect in ASPECT_VALUES}
    popularity = catalogue["popularity"]

    images_dir = tmp / "images"
    images_dir.mkdir()
    item_rows = []
    aspect_lines = ["item_id\tdomain\tcategory\tcolour\tshape\tpattern\tbrand\tadjective"]
    for i, item in enumerate(item_ids):
        domain = domains[item_domain[i]]
        category = DOMAINS[domain][item_word[i]]
        colour = list(PALETTE)[aspect_of_item["colour"][i]]
        shape = SHAPES[aspect_of_item["shape"][i]]
        pattern = PATTERNS[item_pattern[i]]
        brand = BRANDS[aspect_of_item["brand"][i]]
        adjective = ADJECTIVES[aspect_of_item["adjective"][i]]
        jpeg = _draw_item(rng, colour, shape, pattern, domain, int(p["image_size"]))
        (images_dir / f"{item}.jpg").write_bytes(jpeg)
        model = f"{chr(ord('A') + int(rng.integers(26)))}-{int(rng.integers(100, 1000))}"
        item_rows.append((item, f"{category} {brand} {adjective} {model}", f"{item}.jpg"))
        aspect_lines.append(f"{item}\t{domain}\t{category}\t{colour}\t{shape}\t{pattern}\t{brand}\t{adjective}")

    segment_of_user = _balanced(rng, n_users, n_segments)
    rows: list[tuple[int, int, int, int]] = []  # (time, user, step, item)
    group_lines = ["user_id\tsegment\taspect\tvalue"]
    noise = float(p["noise"])
    for u in range(n_users):
        segment = int(segment_of_user[u])
        aspect = SEGMENT_ASPECTS[segment]
        value_idx = int(rng.integers(len(ASPECT_VALUES[aspect])))
        group_lines.append(f"{user_ids[u]}\t{domains[segment]}\t{aspect}\t{ASPECT_VALUES[aspect][value_idx]}")
        in_domain = item_domain == segment
        liked = in_domain & (aspect_of_item[aspect] == value_idx)
        length = int(rng.integers(int(p["min_len"]), int(p["max_len"]) + 1))
        available = np.ones(n_items, dtype=bool)
        t = _BASE_TIME + int(rng.integers(0, 180 * 86400))
        for step in range(length):
            # A noisy step is a popularity pick from the whole catalogue.
            pool = available & liked if rng.random() >= noise else available
            if not pool.any():  # a long sequence in a small catalogue: widen to the domain
                pool = available & in_domain if (available & in_domain).any() else available
            weights = np.where(pool, popularity, 0.0)
            item = int(rng.choice(n_items, p=weights / weights.sum()))
            available[item] = False  # no repeats: history items are not ranked anyway
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
    segment_lines = "\n".join(
        f"  {domains[s]} users ({int((segment_of_user == s).sum())}): stay in the {domains[s]} domain and "
        f"choose by {SEGMENT_ASPECTS[s]} ({', '.join(ASPECT_VALUES[SEGMENT_ASPECTS[s]])})"
        for s in range(n_segments)
    )
    readme = f"""{name}: synthetic multimodal sequential-recommendation data (recbole-perpeft mmdemo v{MMDEMO_VERSION})

Generated by recbole_perpeft.data.mmdemo.generate_mmdemo with the parameters in {_GENERATOR_FILE}
(seed {p["seed"]}); the same seed gives the same files.

Items ({n_items}): each belongs to a domain ({", ".join(domains)}), named by the category word that
opens its title ("<category> <brand> <adjective> <model>") and hinted at by the image's background
tint. The image (images/<item>.jpg, a coloured {"/".join(SHAPES)} on a light {"/".join(PATTERNS)}
background) shows the colour and shape; the title shows the brand and the adjective. All aspects
are balanced and independent; the pattern is noise. Item popularity is log-normal (sigma {p["popularity_sigma"]}).

Users ({n_users}): latent segments, recorded in groups.tsv (for analysis only, not for training):
{segment_lines}
Each user prefers one value of their segment's aspect. With probability {noise} a step ignores
the preference (a popularity pick over all items). Sequences have {p["min_len"]}-{p["max_len"]}
distinct items, time-ordered (synthetic timestamps from 2020-01-01). item_aspects.tsv lists every
item's domain, category, colour, shape, pattern, brand and adjective (ground truth).

Files: {name}.inter, {name}.item (RecBole atomic files), images/, groups.tsv, item_aspects.tsv.
"""
    atomic_write_text(tmp / "README.txt", readme)
    # Written last: its presence marks a complete dataset.
    atomic_write_text(tmp / _GENERATOR_FILE, json.dumps(p, indent=1, sort_keys=True) + "\n")


def generate_mmdemo(
    out_dir: Path,
    seed: int = 2026,
    n_users: int = 2000,
    n_items: int = 3200,
    n_segments: int = 4,
    min_len: int = 6,
    max_len: int = 20,
    noise: float = 0.1,
    popularity_sigma: float = 0.5,
    image_size: int = 64,
) -> Path:
    """Generate the dataset into ``out_dir`` (the dataset folder; files are named after it).

    Returns ``out_dir``. An existing complete dataset with the same parameters is reused; one
    with different parameters (or a foreign folder) raises ``FileExistsError``.
    """
    out_dir = Path(out_dir)
    params = _params(seed, n_users, n_items, n_segments, min_len, max_len, noise, popularity_sigma, image_size)

    def problem_with(folder: Path) -> str | None:
        generator_file = folder / _GENERATOR_FILE
        try:
            existing = json.loads(generator_file.read_text())
        except (OSError, ValueError):
            existing = None
        if existing != params:
            raise FileExistsError(
                f"{folder} exists but was not generated by generate_mmdemo with these parameters "
                f"(see {generator_file}); remove it or choose another folder"
            )
        return None

    build_once(out_dir, problem_with, lambda folder: _generate_into(folder, out_dir.name, params))
    return out_dir

"""Item content (title and image per item) aligned with RecBole's internal item ids.

The ``.item`` atomic file is read here directly (tab separated, no quoting, every value a
string) rather than through RecBole, because RecBole splits a ``token_seq`` title into word ids
and we need the original text for the foundation model's own tokenizer.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recbole_perpeft.atomic_write import atomic_write_text
from recbole_perpeft.data.images import is_valid_image
from recbole_perpeft.errors import DataFileError

# One path segment of an image file name: the same alphabet the converters write.
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
# Counters of the report, in the order they are logged.
REPORT_KEYS = (
    "missing_from_item_file",
    "no_title",
    "no_image",
    "image_missing",
    "image_corrupt",
    "unsafe_image_path",
    "duplicate_item_ids",
    "malformed_lines",
    "undecodable_lines",
    "unused_item_rows",
)
# How many example ids each warning shows.
_EXAMPLES = 5


@dataclass
class ItemContent:
    """Content of every item, indexed by RecBole internal item id (index 0 is padding).

    ``image_paths[i]`` is an absolute path or ``None``; ``has_title`` / ``has_image`` are the
    masks the encoder uses for items lacking a title or an image (never dropped).
    ``report`` holds the counts of :func:`load_item_content` (empty when built by hand).
    """

    raw_item_ids: list[str]
    titles: list[str]
    image_paths: list[str | None]
    has_title: np.ndarray
    has_image: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.titles)


def clean_title(title: str) -> str:
    """Make a title safe for one field of a tab-separated atomic file (no tabs, newlines, CR)."""
    return " ".join(
        title.replace("\t", " ").replace("\r", " ").replace("\n", " ").split()
    )


def is_safe_relative_path(rel: str) -> bool:
    """True when ``rel`` is a relative path of plain segments (``[A-Za-z0-9._-]``, no ``..``)."""
    if not rel or rel.startswith(("/", "\\")) or "\\" in rel:
        return False
    parts = rel.split("/")
    return all(p not in ("", ".", "..") and _SAFE_SEGMENT.match(p) for p in parts)


def resolve_inside(root: Path, rel: str) -> Path | None:
    """The absolute path of ``rel`` under ``root``, or ``None`` when it would leave ``root``.

    The lexical check rejects ``..``, absolute paths and odd characters; the resolved check also
    catches a symbolic link inside the folder that points outside it.
    """
    if not is_safe_relative_path(rel):
        return None
    root_resolved = root.resolve()
    target = (root_resolved / rel).resolve()
    if not target.is_relative_to(root_resolved) or target == root_resolved:
        return None
    return target


def item_file_has_column(item_path: Path, name: str) -> bool:
    """True when ``item_path`` exists and its header has a ``name`` column (``name:type``)."""
    try:
        with open(item_path, encoding="utf-8", errors="replace") as handle:
            header = handle.readline().lstrip("\ufeff").rstrip("\r\n")
    except OSError:
        return False
    return _field_index(_split(header), name) is not None


def item_file_has_images(item_path: Path, image_field: str, images_root: Path) -> bool:
    """True when some item of ``item_path`` names an image file that exists under ``images_root``.

    A column that exists but is empty for every item (the converter's ``--no-images`` output)
    or names only missing files is False: such a dataset is text-only. Stops at the first image.
    """
    try:
        with open(item_path, encoding="utf-8", errors="replace") as handle:
            column = _field_index(_split(handle.readline().lstrip("\ufeff").rstrip("\r\n")), image_field)
            if column is None:
                return False
            for line in handle:
                fields = _split(line.rstrip("\r\n"))
                value = fields[column].strip() if column < len(fields) else ""
                if value:
                    path = resolve_inside(images_root, value)
                    if path is not None and path.is_file():
                        return True
    except OSError:
        return False
    return False


def _field_index(header: list[str], name: str) -> int | None:
    """Column of ``name`` in a RecBole header (``name:type``); ``None`` when absent."""
    for i, column in enumerate(header):
        if column.split(":", 1)[0] == name:
            return i
    return None


def _read_lines(path: Path) -> tuple[list[str], list[int]]:
    """Decode ``path`` line by line; undecodable lines are kept with replacement characters.

    Returns the lines and the 1-based numbers of the undecodable ones.
    """
    raw = path.read_bytes()
    lines: list[str] = []
    undecodable: list[int] = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            undecodable.append(number)
            lines.append(chunk.decode("utf-8", errors="replace"))
    if lines and lines[-1] == "":
        lines.pop()
    return lines, undecodable


def _split(line: str) -> list[str]:
    return line[:-1].split("\t") if line.endswith("\r") else line.split("\t")


def load_item_content(
    dataset_dir: Path,
    dataset_name: str,
    raw_item_ids: Sequence[str],
    title_field: str = "title",
    image_field: str = "image",
    image_dir: str = "images",
    logger: logging.Logger | None = None,
    item_id_field: str = "item_id",
    verify_images: bool = False,
) -> ItemContent:
    """Read ``dataset_dir/dataset_name.item`` and align titles and images with internal item ids.

    ``raw_item_ids[i]`` is the raw token of internal id ``i`` (``raw_item_ids[0]`` is RecBole's
    ``"[PAD]"``). Nothing is dropped silently: every item lacking a title or a usable image is
    flagged in ``has_title`` / ``has_image`` and counted in ``ItemContent.report``, which is also
    logged as warnings. ``verify_images`` additionally opens every image and runs PIL's
    ``verify()``; by default corrupt files are found (and counted) by the content cache, which
    decodes every image once anyway.
    """
    log = logger or logging.getLogger(__name__)
    dataset_dir = Path(dataset_dir)
    item_path = dataset_dir / f"{dataset_name}.item"
    if not item_path.is_file():
        raise DataFileError(
            f"item file {item_path} not found: the multimodal models need item content "
            f"(header '{item_id_field}:token\\t{title_field}:token_seq\\t{image_field}:token'); "
            "see docs/data.md for the layout"
        )
    images_root = dataset_dir / image_dir

    lines, undecodable = _read_lines(item_path)
    if not lines:
        raise DataFileError(
            f"{item_path}: the item file is empty; expected a header such as "
            f"'{item_id_field}:token<TAB>{title_field}:token_seq<TAB>{image_field}:token' and one line per item"
        )
    # Tab-separated without quoting (csv.QUOTE_NONE semantics): a plain split, which unlike the
    # csv module also tolerates a stray carriage return inside a title instead of raising.
    header = _split(lines[0].lstrip("\ufeff"))
    id_col = _field_index(header, item_id_field)
    if id_col is None:
        raise DataFileError(
            f"{item_path}:1: no '{item_id_field}' column (header: {header})"
        )
    title_col = _field_index(header, title_field)
    image_col = _field_index(header, image_field)
    if title_col is None:
        log.warning(
            "%s has no '%s' column: every item is without title", item_path, title_field
        )
    if image_col is None:
        log.warning(
            "%s has no '%s' column: every item is without image", item_path, image_field
        )

    examples: dict[str, list[str]] = {k: [] for k in REPORT_KEYS}
    counts: dict[str, int] = {k: 0 for k in REPORT_KEYS}
    counts["undecodable_lines"] = len(undecodable)
    # Named as FILE:LINE (kept, with replacement characters, so the item is not lost).
    examples["undecodable_lines"] = [f"{item_path}:{number}" for number in undecodable[:_EXAMPLES]]

    def flag(key: str, example: str) -> None:
        counts[key] += 1
        if len(examples[key]) < _EXAMPLES:
            examples[key].append(example)

    rows: dict[str, tuple[str, str]] = {}
    n_cols = len(header)
    for line_no, line in enumerate(lines[1:], start=2):
        row = _split(line)
        if not row or (len(row) == 1 and row[0].strip() == ""):
            continue  # blank lines carry nothing
        if len(row) != n_cols:
            flag(
                "malformed_lines",
                f"line {line_no}: {len(row)} columns, expected {n_cols}",
            )
            continue
        item = row[id_col]
        if item in rows:
            flag("duplicate_item_ids", item)
            continue  # first wins
        title = row[title_col] if title_col is not None else ""
        image = row[image_col] if image_col is not None else ""
        rows[item] = (title, image)
    if not rows:
        raise DataFileError(
            f"{item_path}: no item line{' (every line is malformed)' if counts['malformed_lines'] else ''}; "
            "the item file needs one line per item"
        )

    n = len(raw_item_ids)
    titles: list[str] = [""] * n
    image_paths: list[str | None] = [None] * n
    has_title = np.zeros(n, dtype=bool)
    has_image = np.zeros(n, dtype=bool)
    used: set[str] = set()
    for i in range(1, n):
        item = str(raw_item_ids[i])
        entry = rows.get(item)
        if entry is None:
            flag("missing_from_item_file", item)
            flag("no_title", item)
            flag("no_image", item)
            continue
        used.add(item)
        title, image = entry
        title = clean_title(title)
        if title:
            titles[i] = title
            has_title[i] = True
        else:
            flag("no_title", item)
        image = image.strip()
        if not image:
            flag("no_image", item)
            continue
        path = resolve_inside(images_root, image)
        if path is None:
            flag("unsafe_image_path", f"{item}: {image!r}")
            flag("no_image", item)
            continue
        try:
            size = path.stat().st_size if path.is_file() else -1
        except OSError:
            size = -1
        if size < 0:
            flag("image_missing", f"{item}: {image}")
            flag("no_image", item)
            continue
        if size == 0 or (verify_images and not is_valid_image(path)):
            flag("image_corrupt", f"{item}: {image}")
            flag("no_image", item)
            continue
        image_paths[i] = os.fspath(path)
        has_image[i] = True
    counts["unused_item_rows"] = len(rows) - len(used)

    report: dict[str, Any] = {
        "item_file": os.fspath(item_path),
        "n_items": n - 1,
        "n_with_title": int(has_title.sum()),
        "n_with_image": int(has_image.sum()),
        "images_verified": verify_images,
        **counts,
        "examples": {k: v for k, v in examples.items() if v},
    }
    for key in REPORT_KEYS:
        if counts[key] and key != "unused_item_rows":
            log.warning(
                "item content of %s: %d %s (e.g. %s)",
                dataset_name,
                counts[key],
                key.replace("_", " "),
                ", ".join(examples[key]) or "-",
            )
    log.info(
        "item content of %s: %d items, %d with title, %d with image",
        dataset_name,
        n - 1,
        report["n_with_title"],
        report["n_with_image"],
    )
    return ItemContent(
        raw_item_ids=[str(x) for x in raw_item_ids],
        titles=titles,
        image_paths=image_paths,
        has_title=has_title,
        has_image=has_image,
        report=report,
    )


def write_inter_file(path: Path, rows: Sequence[tuple[str, str, float]]) -> None:
    """Write a RecBole ``.inter`` file (``user_id:token, item_id:token, timestamp:float``).

    ``rows`` are written in the given order (callers pass them time-ordered); the write goes
    through a temporary file and ``os.replace`` so a reader never sees half a file.
    """
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{_format_time(t)}" for u, i, t in rows]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def write_item_file(
    path: Path,
    rows: Sequence[tuple[str, str, str]],
    title_field: str = "title",
    image_field: str = "image",
) -> None:
    """Write a RecBole ``.item`` file (``item_id:token, <title>:token_seq, <image>:token``).

    Titles are cleaned with :func:`clean_title`; the image column holds a file name relative to
    the images folder, or is empty when the item has no image.
    """
    lines = [f"item_id:token\t{title_field}:token_seq\t{image_field}:token"]
    for item, title, image in rows:
        if (
            "\t" in item
            or "\n" in item
            or "\r" in item
            or "\t" in image
            or "\n" in image
        ):
            raise ValueError(
                f"item id or image name contains a tab or newline: {item!r} / {image!r}"
            )
        lines.append(f"{item}\t{clean_title(title)}\t{image}")
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def _format_time(t: float) -> str:
    # Integral timestamps stay integral in the file ("1600000000", not "1600000000.0").
    return str(int(t)) if float(t).is_integer() else repr(float(t))

"""Converters from raw sources to the dataset layout of ``docs/data.md``.

``python -m recbole_perpeft.data.convert amazon2023 ...``   Amazon Reviews 2023 category files
``python -m recbole_perpeft.data.convert perpeft-release ...``   the PerPEFT paper's release

Bad input is reported with counts and a clear message; the command exits non-zero without a
traceback when it cannot produce a dataset.
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import numbers
import os
import pickle
import re
import shutil
import sys
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd

from recbole_perpeft.atomic_write import atomic_write_text
from recbole_perpeft.data.content import write_inter_file, write_item_file
from recbole_perpeft.data.download import download_images, safe_image_name
from recbole_perpeft.data.images import DEFAULT_MAX_IMAGE_PIXELS
from recbole_perpeft.errors import storage_cause

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ASIN = re.compile(r"^[A-Za-z0-9._-]+$")
# Amazon timestamps are milliseconds; .inter files hold seconds like RecBole's own datasets.
_MS_PER_S = 1000.0
_EXAMPLES = 5


class ConversionError(Exception):
    """Bad input that stops a conversion; the CLI prints it without a traceback."""


@dataclass
class ConversionReport:
    """Counts of one conversion, printed as the summary."""

    name: str
    dataset_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def note_lines(self, what: str, line_numbers: list[int]) -> None:
        """Note ``what`` at the first few of ``line_numbers`` (nothing when there are none)."""
        if line_numbers:
            shown = ", ".join(map(str, line_numbers[:_EXAMPLES]))
            self.notes.append(f"{what} {shown}" + (" ..." if len(line_numbers) > _EXAMPLES else ""))

    def format(self) -> str:
        lines = [f"dataset '{self.name}' written to {self.dataset_dir}"]
        width = max((len(k) for k in self.counts), default=0)
        lines += [
            f"  {k.replace('_', ' '):<{width}}  {v}" for k, v in self.counts.items()
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(
            "run it with:\n  python run_recbole_perpeft.py --model=PerPEFT "
            f"--dataset={self.name} --data_path={self.dataset_dir.parent}"
        )
        return "\n".join(lines)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ConversionError(
            f"dataset name {name!r} must start with a letter or digit and contain only "
            "letters, digits, '.', '_' and '-'"
        )


# Written into every dataset folder a converter fills: which converter, from which files. A
# second conversion into the same folder must come from the same source (re-running resumes an
# interrupted image download); anything else would replace another dataset's files and mix its
# images with the new ones, so it is refused unless --overwrite is given.
PROVENANCE_FILE = "converted_from.json"


def _provenance(converter: str, **sources: Path | str | None) -> dict[str, str]:
    return {"converter": converter,
            **{key: str(Path(value).resolve()) if isinstance(value, Path) else str(value)
               for key, value in sources.items() if value is not None}}


def _check_dataset_folder(dataset_dir: Path, provenance: dict[str, str], overwrite: bool) -> bool:
    """Whether ``dataset_dir`` may be written by this conversion; True when it must be emptied first.

    Refused (:class:`ConversionError`, nothing written): a file in its place, or a non-empty folder
    that another converter or source filled (or that holds no provenance record), unless
    ``overwrite``.
    """
    if not dataset_dir.exists():
        return False
    if not dataset_dir.is_dir():
        raise ConversionError(f"{dataset_dir} is a file; the dataset goes into a folder of that name")
    held = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in dataset_dir.iterdir())
    if not held:
        return False
    try:
        previous = json.loads((dataset_dir / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if previous == provenance:
        return False  # the same conversion again: it resumes or refreshes its own files
    if overwrite:
        return True
    shown = ", ".join(held[:_EXAMPLES]) + (", ..." if len(held) > _EXAMPLES else "")
    origin = ("converted by this tool from other input" if isinstance(previous, dict)
              else f"not written by this converter (no {PROVENANCE_FILE})")
    raise ConversionError(
        f"{dataset_dir} already holds a dataset ({shown}) {origin}; nothing was written: "
        "choose another --name or --out, or pass --overwrite to replace it"
    )


def _prepare_dataset_folder(dataset_dir: Path, provenance: dict[str, str], empty_first: bool) -> None:
    """Create ``dataset_dir`` (emptied first under ``--overwrite``) and record where it comes from."""
    if empty_first:
        # Renamed away first, so an interrupted removal never leaves a half-deleted dataset in place.
        trash = dataset_dir.parent / f".{dataset_dir.name}.replaced-{os.getpid()}"
        os.rename(dataset_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dataset_dir / PROVENANCE_FILE, json.dumps(provenance, indent=1) + "\n")


def _open_text(path: Path) -> IO[str]:
    """Open a .jsonl or .jsonl.gz file as text (gzip detected from the magic bytes)."""
    if not path.is_file():
        raise ConversionError(f"input file {path} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def iter_jsonl(path: Path, bad: list[int]) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of ``path``; line numbers of malformed lines go to ``bad``."""
    with _open_text(path) as fh:
        try:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    bad.append(line_no)
                    continue
                if not isinstance(obj, dict):
                    bad.append(line_no)
                    continue
                yield obj
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:  # corrupt or truncated gzip, bad bytes
            raise ConversionError(f"cannot read {path}: {err}") from err


def _token(value: Any) -> str | None:
    """A usable id token (non-empty, no whitespace control characters) or ``None``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or any(c in value for c in "\t\n\r"):
        return None
    return value


def choose_image_url(images: Any) -> str | None:
    """The image URL of one item from Amazon 2023 metadata ``images``.

    The entry is the first ``MAIN`` variant if present, else the first one; inside it ``large``
    is preferred, then ``hi_res``, then ``thumb``. Entries without any URL fall through to the
    next entry. Older dumps store a dict of lists; it is read the same way.
    """
    if isinstance(images, dict):
        keys = [
            k
            for k in ("large", "hi_res", "thumb", "variant")
            if isinstance(images.get(k), list)
        ]
        n = max((len(images[k]) for k in keys), default=0)
        images = [
            {k: images[k][i] for k in keys if i < len(images[k])} for i in range(n)
        ]
    if not isinstance(images, list):
        return None
    entries = [im for im in images if isinstance(im, dict)]
    mains = [im for im in entries if str(im.get("variant") or "").upper() == "MAIN"]
    for entry in mains[:1] + entries:
        for key in ("large", "hi_res", "thumb"):
            url = entry.get(key)
            if isinstance(url, str) and url.strip():
                return url.strip()
    return None


def kcore(df: pd.DataFrame, k: int) -> tuple[pd.DataFrame, int]:
    """Iterative k-core: drop users and items with fewer than ``k`` interactions until stable.

    Returns the filtered frame (order kept) and the number of passes.
    """
    passes = 0
    if k <= 1:
        return df, passes
    while True:
        passes += 1
        user_deg = df["user"].map(df["user"].value_counts())
        item_deg = df["item"].map(df["item"].value_counts())
        keep = (user_deg >= k) & (item_deg >= k)
        if bool(keep.all()):
            return df, passes
        df = df[keep]


def convert_amazon2023(
    reviews: Path,
    meta: Path,
    name: str,
    out: Path,
    kcore_k: int = 5,
    images: bool = True,
    workers: int = 8,
    timeout: float = 10.0,
    retries: int = 3,
    max_image_bytes: int = 10_000_000,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    backoff: float = 0.5,
    show_progress: bool = True,
    overwrite: bool = False,
) -> ConversionReport:
    """Amazon Reviews 2023 ``<Category>.jsonl(.gz)`` + ``meta_<Category>.jsonl(.gz)`` -> dataset.

    Keeps the first interaction of each (user, item) pair in time, applies an iterative k-core,
    writes ``.inter`` in time order (ties keep file order) and ``.item``, and downloads one
    image per item unless ``images`` is false. ``out/name`` must be new, empty, or this same
    conversion's earlier output; ``overwrite`` replaces whatever it holds.
    """
    _check_name(name)
    if kcore_k < 0:
        raise ConversionError("--kcore must be >= 0")
    if not 0 < timeout < float("inf") or retries < 0 or not 0 <= backoff < float("inf"):
        raise ConversionError(f"--timeout must be > 0 s, --retries >= 0, --backoff >= 0 s; got "
                              f"{timeout}, {retries}, {backoff}")
    for path in (Path(reviews), Path(meta)):  # a missing input is the first thing to hear about
        if not path.is_file():
            raise ConversionError(f"input file {path} does not exist")
    dataset_dir = Path(out) / name
    provenance = _provenance("amazon2023", reviews=Path(reviews), meta=Path(meta))
    empty_first = _check_dataset_folder(dataset_dir, provenance, overwrite)
    report = ConversionReport(name, dataset_dir)
    c = report.counts

    bad_review_lines: list[int] = []
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    invalid = 0
    for obj in iter_jsonl(Path(reviews), bad_review_lines):
        user, item, ts = (
            _token(obj.get("user_id")),
            _token(obj.get("parent_asin")),
            obj.get("timestamp"),
        )
        if isinstance(ts, str):
            try:
                ts = float(ts)
            except ValueError:
                ts = None
        if (
            user is None
            or item is None
            or not isinstance(ts, (int, float))
            or isinstance(ts, bool)
        ):
            invalid += 1
            continue
        users.append(user)
        items.append(item)
        times.append(float(ts))
    c["review_lines_malformed_json"] = len(bad_review_lines)
    c["reviews_missing_fields"] = invalid
    c["reviews_read"] = len(users)
    report.note_lines(f"malformed JSON in {reviews} at line(s)", bad_review_lines)
    if not users:
        raise ConversionError(
            f"no usable review in {reviews} (fields user_id, parent_asin, timestamp)"
        )

    df = pd.DataFrame({"user": users, "item": items, "ts": times})
    # Stable sort on time only: ties keep the order of the review file.
    df = df.sort_values("ts", kind="stable")
    dup = df.duplicated(["user", "item"], keep="first")
    c["duplicate_user_item_removed"] = int(dup.sum())
    df = df[~dup]
    before = len(df)
    df, passes = kcore(df, kcore_k)
    c["kcore"] = kcore_k
    c["kcore_passes"] = passes
    c["interactions_removed_by_kcore"] = before - len(df)
    if df.empty:
        raise ConversionError(
            f"nothing left after the {kcore_k}-core filter ({before} interactions before); "
            "use a smaller --kcore"
        )
    kept_items = set(df["item"].unique())

    bad_meta_lines: list[int] = []
    titles: dict[str, str] = {}
    urls: dict[str, str | None] = {}
    dup_meta = 0
    for obj in iter_jsonl(Path(meta), bad_meta_lines):
        asin = _token(obj.get("parent_asin"))
        if asin is None or asin not in kept_items:
            continue
        if asin in titles:
            dup_meta += 1
            continue  # first wins
        title = obj.get("title")
        # Amazon's metadata keeps HTML entities ("16&quot;H", "Black &amp; Decker").
        titles[asin] = html.unescape(title) if isinstance(title, str) else ""
        urls[asin] = choose_image_url(obj.get("images"))
    c["meta_lines_malformed_json"] = len(bad_meta_lines)
    c["meta_duplicate_items"] = dup_meta
    report.note_lines(f"malformed JSON in {meta} at line(s)", bad_meta_lines)

    item_order = sorted(kept_items)
    c["users"] = int(df["user"].nunique())
    c["items"] = len(item_order)
    c["interactions"] = len(df)
    c["items_without_metadata"] = sum(1 for i in item_order if i not in titles)
    c["items_without_title"] = sum(
        1 for i in item_order if not titles.get(i, "").strip()
    )
    c["items_without_image_url"] = sum(1 for i in item_order if not urls.get(i))

    _prepare_dataset_folder(dataset_dir, provenance, empty_first)
    files: dict[str, str] = {}
    if images:
        jobs = [(i, urls[i]) for i in item_order if urls.get(i)]
        dl = download_images(
            jobs,
            dataset_dir / "images",
            workers=workers,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_bytes=max_image_bytes,
            max_pixels=max_image_pixels,
            failures_path=dataset_dir / "download_failures.tsv",
            show_progress=show_progress,
        )
        files = dl.files
        c["images_downloaded"] = dl.downloaded
        c["images_already_present"] = dl.skipped_existing
        c["images_failed"] = sum(dl.failed.values())
        for kind, n in sorted(dl.failed.items()):
            c[f"images_failed_{kind}"] = n
        if dl.failures:
            report.notes.append(
                f"image failures listed in {dataset_dir / 'download_failures.tsv'}"
            )
    else:
        report.notes.append("--no-images: the image column is empty for every item")
    c["items_without_image"] = len(item_order) - len(files)

    write_inter_file(
        dataset_dir / f"{name}.inter",
        list(zip(df["user"], df["item"], (t / _MS_PER_S for t in df["ts"]))),
    )
    write_item_file(
        dataset_dir / f"{name}.item",
        [(i, titles.get(i, ""), files.get(i, "")) for i in item_order],
    )
    return report


def _load_trusted_pickle(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)  # only reached with --trust-pickles (trusted input)
    except Exception as err:  # unpickling can raise anything
        raise ConversionError(
            f"cannot unpickle {path}: {type(err).__name__}: {err}"
        ) from err
    if not hasattr(obj, "items"):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return dict(obj.items())


def _as_int(value: Any) -> int | None:
    """``value`` as an int (ints, numpy ints, digit strings), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (copy across file systems), atomically via a temp name."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dst.parent)) / dst.name
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def convert_perpeft_release(
    src_dir: Path,
    name: str,
    out: Path,
    trust_pickles: bool = False,
    release_name: str | None = None,
    overwrite: bool = False,
) -> ConversionReport:
    """The PerPEFT release (``NAME_final.txt``, two pickles, ``NAME_images/``) -> dataset.

    Pickles run code when loaded: they are read only with ``trust_pickles`` (trusted input).
    Every user's line order is kept through a synthetic increasing timestamp (the line number).
    ``release_name`` is the file prefix in ``src_dir`` when it differs from ``name``. ``out/name``
    must be new, empty, or this same conversion's earlier output; ``overwrite`` replaces it.
    """
    _check_name(name)
    prefix = release_name or name
    _check_name(prefix)
    src_dir = Path(src_dir)
    inter_src = src_dir / f"{prefix}_final.txt"
    item2id_src = src_dir / f"{prefix}_item2id_final.pickle"
    texts_src = src_dir / f"{prefix}_texts_final.pickle"
    images_src = src_dir / f"{prefix}_images"
    if not src_dir.is_dir():
        raise ConversionError(f"source directory {src_dir} does not exist")
    missing = [p.name for p in (inter_src, item2id_src, texts_src) if not p.is_file()]
    if missing:
        raise ConversionError(
            f"{src_dir} lacks {', '.join(missing)} (the PerPEFT release layout)"
        )
    if not trust_pickles:
        raise ConversionError(
            f"{item2id_src.name} and {texts_src.name} are Python pickles, and loading a pickle "
            "can run arbitrary code. Pass --trust-pickles only if these files come from a "
            "source you trust (e.g. the authors' release you downloaded yourself)."
        )
    dataset_dir = Path(out) / name
    provenance = _provenance("perpeft-release", source=src_dir, release_name=prefix)
    empty_first = _check_dataset_folder(dataset_dir, provenance, overwrite)
    report = ConversionReport(name, dataset_dir)
    c = report.counts

    raw_map = _load_trusted_pickle(item2id_src)
    # The release maps item id -> ASIN; accept the inverted orientation too (ASIN -> id).
    keys_int = sum(_as_int(k) is not None for k in raw_map)
    vals_int = sum(_as_int(v) is not None for v in raw_map.values())
    if vals_int > keys_int:
        raw_map = {v: k for k, v in raw_map.items()}
        report.notes.append(f"{item2id_src.name} maps ASIN -> id; read inverted")
    id2asin: dict[int, str] = {}
    bad_map = 0
    for k, v in raw_map.items():
        key, asin = _as_int(k), _token(v)
        if key is None or asin is None:
            bad_map += 1
            continue
        id2asin[key] = asin
    c["item2id_entries_unusable"] = bad_map
    texts = {str(k): v for k, v in _load_trusted_pickle(texts_src).items()}

    rows: list[tuple[str, str, float]] = []
    malformed: list[int] = []
    unknown_ids: Counter = Counter()
    with open(inter_src, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if (
                len(parts) != 2
                or _as_int(parts[0]) is None
                or _as_int(parts[1]) is None
            ):
                malformed.append(line_no)
                continue
            user, item_id = parts[0], int(parts[1])
            asin = id2asin.get(item_id)
            if asin is None:
                # Kept (never dropped silently) under a synthetic token, without content.
                unknown_ids[item_id] += 1
                asin = f"id_{item_id}"
            rows.append((user, asin, float(line_no)))
    c["lines_malformed"] = len(malformed)
    report.note_lines(f"malformed lines in {inter_src.name}:", malformed)
    if not rows:
        raise ConversionError(f"no interaction in {inter_src}")
    c["users"] = len({u for u, _, _ in rows})
    item_order = sorted({i for _, i, _ in rows})
    c["items"] = len(item_order)
    c["interactions"] = len(rows)
    c["item_ids_missing_from_item2id"] = len(unknown_ids)

    _prepare_dataset_folder(dataset_dir, provenance, empty_first)
    images_dir = dataset_dir / "images"
    images_dir.mkdir(exist_ok=True)
    item_rows: list[tuple[str, str, str]] = []
    no_title = no_image = linked = reused = unsafe = 0
    for asin in item_order:
        title = texts.get(asin)
        title = (
            title if isinstance(title, str) else ("" if title is None else str(title))
        )
        if not title.strip():
            no_title += 1
        image = ""
        if _ASIN.match(asin) and asin not in (".", ".."):
            src = images_src / f"{asin}.jpg"
            if src.is_file():
                dst_name = safe_image_name(asin)
                dst = images_dir / dst_name
                if dst.is_file() and dst.stat().st_size == src.stat().st_size:
                    reused += 1
                else:
                    _link_or_copy(src, dst)
                    linked += 1
                image = dst_name
        else:
            unsafe += 1
        if not image:
            no_image += 1
        item_rows.append((asin, title, image))
    c["items_without_title"] = no_title
    c["items_without_image"] = no_image
    c["images_linked_or_copied"] = linked
    c["images_already_present"] = reused
    c["items_with_unsafe_asin"] = unsafe
    if not images_src.is_dir():
        report.notes.append(f"{images_src} does not exist: no item has an image")

    write_inter_file(dataset_dir / f"{name}.inter", rows)
    write_item_file(dataset_dir / f"{name}.item", item_rows)
    return report


def _number_at_least(kind: type, low: float, strict: bool, what: str):
    """An argparse type: a finite ``kind`` (int or float) above ``low`` (or equal, unless strict)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not (low < value if strict else low <= value) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return parse


_positive_int = _number_at_least(int, 0, True, "a positive integer")
_non_negative_int = _number_at_least(int, 0, False, "an integer >= 0")
_positive_seconds = _number_at_least(float, 0, True, "a positive number of seconds")
_non_negative_seconds = _number_at_least(float, 0, False, "a number of seconds >= 0")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (no usage block) and exit code 2."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m recbole_perpeft.data.convert",
        description="Convert raw data into the recbole-perpeft dataset layout (see docs/data.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("amazon2023", help="Amazon Reviews 2023 category files")
    a.add_argument(
        "--reviews", type=Path, required=True, help="<Category>.jsonl or .jsonl.gz"
    )
    a.add_argument(
        "--meta", type=Path, required=True, help="meta_<Category>.jsonl or .jsonl.gz"
    )
    a.add_argument("--name", required=True, help="dataset name (folder and file stem)")
    a.add_argument("--out", type=Path, required=True, help="DATA_PATH: the dataset goes to DATA_PATH/NAME")
    a.add_argument("--kcore", type=int, default=5, help="iterative k-core on users and items (default 5)")
    a.add_argument("--no-images", action="store_true", help="do not download images")
    a.add_argument("--workers", type=_positive_int, default=8)
    a.add_argument("--timeout", type=_positive_seconds, default=10.0, help="seconds per request")
    a.add_argument("--retries", type=_non_negative_int, default=3, help="retries of a transient failure")
    a.add_argument("--max-image-bytes", type=_positive_int, default=10_000_000)
    a.add_argument(
        "--max-image-pixels", type=_positive_int, default=DEFAULT_MAX_IMAGE_PIXELS,
        help="refuse images with more pixels, read from the header before decoding",
    )
    a.add_argument("--backoff", type=_non_negative_seconds, default=0.5, help="first retry delay in seconds (doubles)")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.add_argument("--overwrite", action="store_true",
                   help="replace what DATA_PATH/NAME holds (refused otherwise, unless it is this conversion's)")
    r = sub.add_parser("perpeft-release", help="the PerPEFT paper's released files")
    r.add_argument(
        "src_dir",
        type=Path,
        help="folder with NAME_final.txt, the pickles and NAME_images/",
    )
    r.add_argument("name", help="dataset name (folder and file stem of the output)")
    r.add_argument(
        "--release-name", help="file prefix in SRC_DIR when it differs from NAME"
    )
    r.add_argument(
        "--out",
        type=Path,
        required=True,
        help="DATA_PATH: the dataset goes to DATA_PATH/NAME",
    )
    r.add_argument(
        "--trust-pickles",
        action="store_true",
        help="allow loading the release's pickles (they can run code: trusted files only)",
    )
    r.add_argument("--overwrite", action="store_true",
                   help="replace what DATA_PATH/NAME holds (refused otherwise, unless it is this conversion's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # a bad argument (one line already printed) or --help
        return int(stop.code or 0)
    try:
        if args.command == "amazon2023":
            report = convert_amazon2023(
                args.reviews,
                args.meta,
                args.name,
                args.out,
                kcore_k=args.kcore,
                images=not args.no_images,
                workers=args.workers,
                timeout=args.timeout,
                retries=args.retries,
                max_image_bytes=args.max_image_bytes,
                max_image_pixels=args.max_image_pixels,
                backoff=args.backoff,
                show_progress=not args.quiet,
                overwrite=args.overwrite,
            )
        else:
            report = convert_perpeft_release(
                args.src_dir, args.name, args.out, args.trust_pickles, args.release_name,
                overwrite=args.overwrite,
            )
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        # A full disk (quota, read-only mount) is the environment's fault, reported like bad input.
        return 2 if storage_cause(err) is not None else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())

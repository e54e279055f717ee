"""Download one image per item, safely: http(s) only, capped bytes and pixels, atomic writes.

Each image is streamed with a byte cap, its dimensions are read from the header before any full
decode (a decompression bomb is refused cheaply), it is re-encoded as RGB JPEG and written
through a temporary file and ``os.replace`` strictly inside the images folder, under a file name
derived from the item id by :func:`safe_image_name`. A re-run skips files that are already there
and valid (resume). Every failure is counted and listed in ``download_failures.tsv``.
"""

from __future__ import annotations

import hashlib
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image
from tqdm import tqdm

from recbole_perpeft.atomic_write import atomic_open, atomic_write_text
from recbole_perpeft.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageRefusedError,
    decode_rgb,
    is_valid_image,
)

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_STEM = 100
# Decoders we accept from the network; everything else is refused as undecodable.
_FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP"]
_CHUNK = 64 * 1024
USER_AGENT = "recbole-perpeft-downloader/1.0"


def safe_image_name(item_id: str, suffix: str = ".jpg") -> str:
    """A file name for ``item_id`` made of ``[A-Za-z0-9._-]`` only, never ``.``/``..``-led.

    Ids that are already safe map to themselves (``B00ABC.jpg``); any other id gets its unsafe
    characters replaced and a short hash of the original appended, so two different ids never
    share a file.
    """
    stem = _UNSAFE_CHARS.sub("_", item_id)
    changed = stem != item_id
    if stem.startswith("."):
        stem = "_" + stem.lstrip(".")
        changed = True
    if not stem:
        stem, changed = "item", True
    if len(stem) > _MAX_STEM:
        stem, changed = stem[:_MAX_STEM], True
    if changed:
        digest = hashlib.sha256(
            item_id.encode("utf-8", errors="surrogatepass")
        ).hexdigest()[:10]
        stem = f"{stem}_{digest}"
    return stem + suffix


@dataclass
class DownloadReport:
    """Outcome of :func:`download_images`; ``files`` maps item id -> file name in the folder."""

    total: int = 0
    downloaded: int = 0
    skipped_existing: int = 0
    failed: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        fails = ", ".join(f"{k}: {v}" for k, v in sorted(self.failed.items())) or "none"
        return (
            f"images: {self.total} requested, {self.downloaded} downloaded, "
            f"{self.skipped_existing} already present, {sum(self.failed.values())} failed ({fails})"
        )


class _Failure(Exception):
    """A failed download: ``kind`` is the counted category, ``retry`` whether to try again."""

    def __init__(self, kind: str, detail: str, retry: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.retry = retry


class _SchemeCheckingRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): urllib would also follow one to ftp."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlparse(newurl).scheme.lower() not in ("http", "https"):
            raise _Failure("refused_url", f"redirect to non-http URL {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _fetch(
    opener: urllib.request.OpenerDirector, url: str, timeout: float, max_bytes: int
) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with opener.open(req, timeout=timeout) as resp:
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise _Failure(
                    "too_large", f"Content-Length {declared} > {max_bytes} bytes"
                )
            buf = bytearray()
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                buf.extend(chunk)
                if len(buf) > max_bytes:
                    # Stop streaming: a lying or absent Content-Length must not fill the disk.
                    raise _Failure("too_large", f"more than {max_bytes} bytes")
            return bytes(buf)
    except urllib.error.HTTPError as err:
        retry = err.code >= 500 or err.code == 429
        raise _Failure(
            f"http_{err.code}", f"HTTP {err.code} {err.reason}", retry=retry
        ) from err
    except _Failure:
        raise
    except TimeoutError as err:
        raise _Failure("timeout", f"timed out after {timeout}s", retry=True) from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, _Failure):
            raise err.reason from err
        raise _Failure("network", f"{err.reason}", retry=True) from err
    except (HTTPException, ConnectionError, OSError) as err:
        raise _Failure("network", f"{type(err).__name__}: {err}", retry=True) from err


def _to_rgb(data: bytes, max_pixels: int) -> Image.Image:
    try:
        return decode_rgb(data, max_pixels, formats=_FORMATS)
    except ImageRefusedError as err:
        raise _Failure(err.kind, err.detail) from err


def _write_jpeg(img: Image.Image, target: Path, quality: int) -> None:
    with atomic_open(target, "wb") as handle:
        img.save(handle, format="JPEG", quality=quality)


def _one(
    opener: urllib.request.OpenerDirector,
    item: str,
    url: str,
    images_dir: Path,
    timeout: float,
    retries: int,
    backoff: float,
    max_bytes: int,
    max_pixels: int,
    quality: int,
) -> tuple[str, str, str | None, str]:
    """Returns ``(item, status, file name, detail)``; status is 'ok', 'present' or a failure kind."""
    name = safe_image_name(item)
    target = images_dir / name
    # Belt and braces: the name is safe by construction, the resolved path must agree.
    if target.resolve().parent != images_dir.resolve():
        return (
            item,
            "unsafe_name",
            None,
            f"file name {name!r} escapes the images folder",
        )
    if target.is_file() and is_valid_image(target, max_pixels):
        return item, "present", name, ""
    scheme = urlparse(url).scheme.lower()
    if scheme not in ("http", "https"):
        return (
            item,
            "refused_url",
            None,
            f"scheme {scheme or '(none)'!r} is not http(s)",
        )
    attempt = 0
    while True:
        try:
            data = _fetch(opener, url, timeout, max_bytes)
            img = _to_rgb(data, max_pixels)
            _write_jpeg(img, target, quality)
            return item, "ok", name, ""
        except _Failure as fail:
            if fail.retry and attempt < retries:
                time.sleep(backoff * (2**attempt))
                attempt += 1
                continue
            detail = (
                fail.detail
                if attempt == 0
                else f"{fail.detail} (after {attempt + 1} attempts)"
            )
            return item, fail.kind, None, detail


def download_images(
    jobs: Sequence[tuple[str, str]],
    images_dir: Path,
    *,
    workers: int = 8,
    timeout: float = 10.0,
    retries: int = 3,
    backoff: float = 0.5,
    max_bytes: int = 10_000_000,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    jpeg_quality: int = 90,
    failures_path: Path | None = None,
    show_progress: bool = True,
) -> DownloadReport:
    """Download ``(item_id, url)`` pairs into ``images_dir`` (see the module docstring).

    ``failures_path`` (usually ``NAME/download_failures.tsv``) receives one ``item, url, reason``
    line per failure, sorted by item, always rewritten so it never describes an older run.
    """
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    opener = urllib.request.build_opener(_SchemeCheckingRedirect)
    report = DownloadReport(total=len(jobs))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {
            pool.submit(
                _one,
                opener,
                item,
                url,
                images_dir,
                timeout,
                retries,
                backoff,
                max_bytes,
                max_pixels,
                jpeg_quality,
            ): (item, url)
            for item, url in jobs
        }
        bar = tqdm(
            total=len(futures), desc="images", unit="img", disable=not show_progress
        )
        for fut in as_completed(futures):
            item, url = futures[fut]
            _, status, name, detail = fut.result()
            if status == "ok":
                report.downloaded += 1
            elif status == "present":
                report.skipped_existing += 1
            else:
                report.failed[status] += 1
                report.failures.append((item, url, f"{status}: {detail}"))
            if name is not None:
                report.files[item] = name
            bar.update(1)
        bar.close()
    report.failures.sort()
    if failures_path is not None:
        write_failures(report.failures, Path(failures_path))
    return report


def _tsv_field(value: str) -> str:
    return value.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def write_failures(failures: Sequence[tuple[str, str, str]], path: Path) -> None:
    """Write ``item\\turl\\treason`` lines (with a header) atomically."""
    lines = ["item\turl\treason"] + [
        "\t".join(_tsv_field(x) for x in row) for row in failures
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")

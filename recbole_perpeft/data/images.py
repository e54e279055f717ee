"""Opening and decoding item images under one pixel cap, for every image the project decodes.

A compressed image can be tiny on disk and huge once decoded: a 20 KB PNG of 13000x13000
pixels decodes to half a gigabyte of RGB. Its dimensions sit in the file's header, so
:func:`open_capped` reads them before any pixel is decoded and refuses an image whose pixel count
exceeds the cap. The converters (downloaded images) and the content cache (a dataset's
``images/``) both go through here, with the same default cap; a refused image is treated like a
corrupt one (the item becomes image-less, and the refusal is counted).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from recbole_perpeft.errors import ConfigError

# 40 megapixels: far above any product photo (Amazon's hi_res images are a few megapixels), far
# below what exhausts memory (40 MP decode to 120 MB of RGB). Configurable: ``max_image_pixels``
# (run config) and ``--max-image-pixels`` (converter).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

TOO_MANY_PIXELS = "too_many_pixels"
UNDECODABLE = "undecodable"


class ImageRefusedError(ValueError):
    """An image that is not decoded: ``kind`` is ``too_many_pixels`` or ``undecodable``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def check_max_pixels(max_pixels: object) -> int:
    """``max_pixels`` as a positive int (``None``: the default), else a one-line :class:`ConfigError`."""
    if max_pixels is None:
        return DEFAULT_MAX_IMAGE_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ConfigError(f"max_image_pixels must be a positive integer, got {max_pixels!r}")
    return max_pixels


def open_capped(
    source: str | os.PathLike | bytes,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    formats: Sequence[str] | None = None,
) -> Image.Image:
    """Open an image (a path, or the file's bytes) reading its header only, and enforce the cap.

    Raises :class:`ImageRefusedError` when the header cannot be parsed or announces more than
    ``max_pixels`` pixels; nothing is decoded until the caller asks for pixels.
    """
    check_max_pixels(max_pixels)
    opened = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    with warnings.catch_warnings():
        # PIL's own bomb check warns above ~89 MP and refuses above twice that; ours is stricter
        # and counted, so its warning would only repeat ours.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(opened, formats=formats)
        except Image.DecompressionBombError as error:
            raise ImageRefusedError(TOO_MANY_PIXELS, str(error)) from error
        except Exception as error:  # noqa: BLE001 - PIL raises many unrelated types for a bad file
            raise ImageRefusedError(UNDECODABLE, f"{type(error).__name__}: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageRefusedError(
            TOO_MANY_PIXELS, f"{width}x{height} = {width * height} pixels > {max_pixels} (max_image_pixels)"
        )
    return image


def decode_rgb(
    source: str | os.PathLike | bytes,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    formats: Sequence[str] | None = None,
) -> Image.Image:
    """The image fully decoded to RGB, after the header check of :func:`open_capped`."""
    image = open_capped(source, max_pixels, formats)
    try:
        with image:
            return image.convert("RGB")
    except Exception as error:  # noqa: BLE001 - a truncated or damaged body fails only here
        raise ImageRefusedError(UNDECODABLE, f"{type(error).__name__}: {error}") from error


def is_valid_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> bool:
    """Cheap validity check: the header parses, is within the pixel cap, and ``verify()`` passes."""
    try:
        image = open_capped(path, max_pixels)
    except ImageRefusedError:
        return False
    try:
        with image:
            image.verify()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many unrelated types for a bad file
        return False

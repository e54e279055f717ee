"""Item processors: Hugging Face tokenizers and image processors behind :class:`ItemProcessor`.

The data room runs a processor once per dataset and caches its arrays on disk under
``fingerprint()``; so the fingerprint must cover everything that shapes those arrays (vocabulary,
merges, normalisation, text length, image size, crop, mean/std, resampling...).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from recbole_perpeft.encoders.base import ItemProcessor


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-serialisable object (sorted keys, reprs for the rest)."""
    payload = json.dumps(obj, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def _tokenizer_state(tokenizer: Any) -> Any:
    """The parts of a tokenizer that decide which ids come out."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Truncation/padding in the serialised backend reflect the *last call*, not the vocabulary.
        state.pop("truncation", None)
        state.pop("padding", None)
    else:  # a slow (Python) tokenizer: its vocabulary is the best summary we have
        state = {"vocab": tokenizer.get_vocab()}
    return {
        "class": type(tokenizer).__name__,
        "backend": state,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "padding_side": getattr(tokenizer, "padding_side", "right"),
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
    }


def _image_processor_state(image_processor: Any) -> Any:
    state = image_processor.to_dict()
    # Names of auto-generated processor classes differ between backends (PIL/torchvision) but the
    # numbers they produce are the same, so only the numeric config counts.
    state.pop("image_processor_type", None)
    state.pop("processor_class", None)
    return state


def _size_to_hw(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        return edge, edge
    raise ValueError(f"cannot derive a fixed image shape from size={size!r}")


class HFItemProcessor(ItemProcessor):
    """Wraps a Hugging Face tokenizer and (optionally) image processor.

    Titles are padded/truncated to exactly ``text_length`` tokens; images are resized, centre
    cropped and normalised by the image processor to ``image_shape``.
    """

    def __init__(self, tokenizer: Any, image_processor: Any | None = None, text_length: int = 77) -> None:
        if text_length <= 0:
            raise ValueError(f"text_length must be positive, got {text_length}")
        if tokenizer.pad_token is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no pad token; cannot pad titles")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.text_length = int(text_length)
        self.image_shape = self._derive_image_shape() if image_processor is not None else None

    def _derive_image_shape(self) -> tuple[int, int, int]:
        ip = self.image_processor
        if getattr(ip, "do_center_crop", False) and getattr(ip, "crop_size", None):
            h, w = _size_to_hw(ip.crop_size)
        else:
            h, w = _size_to_hw(ip.size)
        return (3, h, w)

    def tokenize(self, titles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        titles = ["" if t is None else str(t) for t in titles]
        if not titles:
            empty = np.zeros((0, self.text_length), dtype=np.int64)
            return empty, empty.copy()
        enc = self.tokenizer(
            titles,
            padding="max_length",
            truncation=True,
            max_length=self.text_length,
            return_tensors="np",
        )
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def process_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if self.image_processor is None:
            raise ValueError("this processor is text-only (image_shape is None); it cannot process images")
        if len(images) == 0:
            return np.zeros((0, *self.image_shape), dtype=np.float32)
        rgb = [im.convert("RGB") if im.mode != "RGB" else im for im in images]
        out = self.image_processor(images=rgb, return_tensors="np")["pixel_values"]
        out = np.asarray(out, dtype=np.float32)
        if out.shape[1:] != self.image_shape:
            raise RuntimeError(f"image processor produced {out.shape[1:]}, expected {self.image_shape}")
        return out

    def fingerprint(self) -> str:
        state = {
            "text_length": self.text_length,
            "tokenizer": _tokenizer_state(self.tokenizer),
            "image_shape": self.image_shape,
            "image_processor": (
                _image_processor_state(self.image_processor) if self.image_processor is not None else None
            ),
        }
        return stable_hash(state)

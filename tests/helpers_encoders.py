"""Toy item catalogues for the encoder/PEFT tests, processed by the encoder's real processor."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from recbole_perpeft.encoders.base import FoundationEncoder

WORDS = ["red", "blue", "running", "shoe", "tent", "lamp", "puzzle", "kit", "wooden", "glass", "pro", "mini"]


def toy_titles(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 6)))) for _ in range(n)]


def toy_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed + 1)
    return [Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)) for _ in range(n)]


def toy_content(encoder: FoundationEncoder, n_items: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Content of ``n_items`` rows (row 0 = padding); item 2 lacks an image, item 3 a title.

    Pixels are stored as float16, as the data room's memory-mapped cache does.
    """
    titles = toy_titles(n_items, seed)
    titles[0] = ""
    ids, mask = encoder.processor.tokenize(titles)
    has_title = np.ones(n_items, dtype=bool)
    has_image = np.ones(n_items, dtype=bool)
    has_title[[0, 3]] = False
    has_image[[0, 2]] = False
    content = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "has_title": torch.from_numpy(has_title),
        "has_image": torch.from_numpy(has_image),
    }
    if encoder.processor.image_shape is not None:
        pixels = encoder.processor.process_images(toy_images(n_items, seed))
        pixels[~has_image] = 0
        content["pixel_values"] = torch.from_numpy(pixels.astype(np.float16))
    return content

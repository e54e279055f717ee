"""Foundation-model item encoders (CLIP image+title, text-only HF encoders) and their processors."""

from recbole_perpeft.encoders.base import (
    FoundationEncoder,
    ItemProcessor,
    base_parameters,
)
from recbole_perpeft.encoders.clip import (
    DEFAULT_CLIP,
    RANDOM_CLIP_B32,
    TINY_CLIP,
    CLIPFoundationEncoder,
    build_pretrained_clip,
    build_random_clip_b32,
    build_tiny_clip,
    char_level_clip_tokenizer,
)
from recbole_perpeft.encoders.factory import build_foundation_encoder, local_model_names
from recbole_perpeft.encoders.processors import HFItemProcessor
from recbole_perpeft.encoders.text import (
    TextFoundationEncoder,
    build_text_encoder,
    minilm_model_dir,
)

__all__ = [
    "DEFAULT_CLIP",
    "RANDOM_CLIP_B32",
    "TINY_CLIP",
    "CLIPFoundationEncoder",
    "FoundationEncoder",
    "HFItemProcessor",
    "ItemProcessor",
    "TextFoundationEncoder",
    "base_parameters",
    "build_foundation_encoder",
    "build_pretrained_clip",
    "build_random_clip_b32",
    "build_text_encoder",
    "build_tiny_clip",
    "char_level_clip_tokenizer",
    "local_model_names",
    "minilm_model_dir",
]

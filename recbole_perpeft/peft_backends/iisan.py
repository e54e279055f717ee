"""IISAN (SIGIR 2024): decoupled PEFT with a side network over cached frozen hidden states.

The frozen towers run once over the whole catalogue; the summary token of selected layers (CLS for
the image tower, the pooled EOS token for CLIP's text tower, the masked mean for text-only
encoders) is cached on disk as float16 ``.npy`` memory maps. Training then touches only the side
network, never the foundation model: no activations of the towers are stored and no gradient can
reach them.

Side network (one per group), over ``L`` cached states per tower:

* per layer, an intra-image block, an intra-text block and an inter-modal block; each is a
  bottleneck adapter ``x + up(act(down(x)))`` (``down`` to 32 by default, ``up`` zero-initialised
  so a fresh block passes its input through);
* block ``l`` of a tower reads ``g_l * s_l + (1 - g_l) * h_{l-1}``: the tower's (layer-normed)
  frozen state ``s_l`` mixed with the previous block's output by a learned sigmoid gate ``g_l``
  (block 0 reads ``s_0``, the embedding output);
* the inter-modal tower's state ``s_l`` fuses the modalities: the mean of the present
  modalities' states, each first projected (learned linear, shared across layers) to the common
  width ``fusion_dim = min(image width, text width)`` when its width differs;
* output = concat(image tower, text tower, inter-modal tower) final states, so
  ``feature_dim = d_image + d_text + fusion_dim`` (768 + 512 + 512 = 1792 for ViT-B/32 CLIP);
  a text-only foundation has the text tower alone (``feature_dim = d_text``).

Items lacking an image (title) get zero image (text) states and a zero image (text) tower output.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recbole_perpeft.cache import cache_root
from recbole_perpeft.encoders.base import FoundationEncoder
from recbole_perpeft.encoders.processors import stable_hash
from recbole_perpeft.peft_backends.base import GroupedItemEncoder
from recbole_perpeft.peft_backends.common import (
    ItemContentStore,
    cached_arrays,
    select_layers,
    unique_rows,
)

IISAN_DEFAULTS: dict[str, Any] = {
    "n_states": 7,  # embeddings + every 2nd of 12 layers, as the reference
    "layers": None,  # or {"image": [...], "text": [...]} explicit hidden-state indices
    "bottleneck": 32,
    "activation": "gelu",
    "build_batch_size": 256,  # items per frozen forward pass while caching
    "preload": "auto",  # copy the cached states into memory/device buffers: True, False, "auto" (< 2 GiB)
    "verify_cache": True,  # checksum the cache files when reusing them
}
_CACHE_VERSION = "iisan-states-v1"
_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class BottleneckAdapter(nn.Module):
    """``x + up(act(down(x)))`` with ``up`` zero-initialised (starts as the identity)."""

    def __init__(self, width: int, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class GatedTower(nn.Module):
    """A stack of ``n_states`` bottleneck blocks with learned sigmoid gates between them."""

    def __init__(self, width: int, n_states: int, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(BottleneckAdapter(width, bottleneck, activation) for _ in range(n_states))
        # sigmoid(0) = 0.5: equal say for the frozen state and the side path at the start.
        self.gates = nn.Parameter(torch.zeros(max(n_states - 1, 0)))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        h = self.blocks[0](states[:, 0])
        for i in range(1, len(self.blocks)):
            g = torch.sigmoid(self.gates[i - 1])
            h = self.blocks[i](g * states[:, i] + (1 - g) * h)
        return h


class IISANSideNetwork(nn.Module):
    """Intra-modal towers per modality plus an inter-modal tower when there are two modalities."""

    def __init__(self, widths: dict[str, int], n_states: int, bottleneck: int = 32, activation: str = "gelu") -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        self.modalities = [m for m in ("image", "text") if m in widths]
        self.widths = dict(widths)
        self.towers = nn.ModuleDict(
            {m: GatedTower(widths[m], n_states, bottleneck, activation) for m in self.modalities}
        )
        self.fusion_dim = min(widths.values()) if len(self.modalities) > 1 else 0
        if self.fusion_dim:
            self.to_fusion = nn.ModuleDict(
                {
                    m: nn.Linear(widths[m], self.fusion_dim, bias=False)
                    for m in self.modalities
                    if widths[m] != self.fusion_dim
                }
            )
            self.inter = GatedTower(self.fusion_dim, n_states, bottleneck, activation)
        self.feature_dim = sum(widths.values()) + self.fusion_dim

    def forward(self, states: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        normed = {m: F.layer_norm(states[m], (self.widths[m],)) for m in self.modalities}
        masks = {m: present[m].to(normed[m].dtype).view(-1, 1) for m in self.modalities}
        outputs = [self.towers[m](normed[m]) * masks[m] for m in self.modalities]
        if self.fusion_dim:
            fused, count = 0, 0
            for m in self.modalities:
                x = self.to_fusion[m](normed[m]) if m in self.to_fusion else normed[m]
                fused = fused + x * masks[m].unsqueeze(-1)
                count = count + masks[m].unsqueeze(-1)
            outputs.append(self.inter(fused / count.clamp(min=1)))
        return torch.cat(outputs, dim=-1)


class IISANGroupedEncoder(GroupedItemEncoder):
    """One IISAN side network per group over the catalogue's cached frozen layer states."""

    def __init__(
        self,
        foundation: FoundationEncoder,
        n_groups: int,
        content: dict[str, torch.Tensor],
        content_key: str,
        *,
        peft_config: dict | None = None,
        cache_dir: str | Path | None = None,
        show_progress: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        unknown = sorted(set(peft_config or {}) - set(IISAN_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown IISAN option(s) {unknown}; valid: {sorted(IISAN_DEFAULTS)}")
        cfg = {**IISAN_DEFAULTS, **(peft_config or {})}
        self.config = cfg
        self.n_groups = int(n_groups)
        store = ItemContentStore(content, foundation)
        self.n_items = store.n_items
        self._foundation_params = foundation.base_parameter_count()
        widths = foundation.tower_widths()
        n_layers = foundation.num_hidden_layers()
        if cfg["layers"] is not None:
            layers = {m: [int(k) for k in cfg["layers"][m]] for m in widths}
            lengths = {len(v) for v in layers.values()}
            if len(lengths) != 1:
                raise ValueError(f"IISAN needs the same number of states per tower, got {layers}")
            for m, ks in layers.items():
                if min(ks) < 0 or max(ks) > n_layers[m]:
                    raise ValueError(f"{m} layer indices {ks} outside 0..{n_layers[m]}")
        else:
            n_states = min(int(cfg["n_states"]), *(n + 1 for n in n_layers.values()))
            layers = {m: select_layers(n_layers[m], n_states) for m in widths}
        self.layers = layers
        n_states = len(next(iter(layers.values())))

        self.cache_key = stable_hash(
            {"v": _CACHE_VERSION, "content": content_key, "model": foundation.fingerprint(), "layers": layers}
        )
        specs = {m: ((self.n_items, n_states, widths[m]), "float16") for m in widths}
        root = Path(cache_dir) if cache_dir is not None else cache_root() / "encoders"
        arrays, self.cache_built = cached_arrays(
            root / "iisan",
            self.cache_key,
            specs,
            lambda out: _fill_states(foundation, store, layers, out, int(cfg["build_batch_size"]), show_progress),
            meta={"content_key": content_key, "encoder": foundation.name, "layers": layers},
            verify=bool(cfg["verify_cache"]),
        )
        self.cache_path = root / "iisan" / self.cache_key

        size = sum(a.nbytes for a in arrays.values())
        preload = cfg["preload"]
        preload = size < (2 << 30) if preload == "auto" else bool(preload)
        self._memmaps: dict[str, torch.Tensor] = {}
        for m, arr in arrays.items():
            if preload:  # a buffer follows .to(device), so gathers happen on the device
                self.register_buffer(f"states_{m}", torch.from_numpy(np.array(arr)), persistent=False)
            else:
                with warnings.catch_warnings():  # read-only memmap: we never write through it
                    warnings.simplefilter("ignore", UserWarning)
                    self._memmaps[m] = torch.from_numpy(arr)
        present = {"image": store.tensors["has_image"], "text": store.tensors["has_title"]}
        for m in widths:
            self.register_buffer(f"present_{m}", present[m].clone(), persistent=False)
        self.modalities = list(widths)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(foundation.seed if seed is None else seed)
            self.side_nets = nn.ModuleList(
                IISANSideNetwork(widths, n_states, int(cfg["bottleneck"]), str(cfg["activation"]))
                for _ in range(self.n_groups)
            )
        for g in range(1, self.n_groups):
            self.copy_group(0, g)
        self.feature_dim = self.side_nets[0].feature_dim
        # Deliberately no reference to the foundation model: training never calls it again.

    def _states(self, m: str) -> torch.Tensor:
        return self._memmaps[m] if m in self._memmaps else getattr(self, f"states_{m}")

    def encode(self, item_ids: torch.Tensor, group: int) -> torch.Tensor:
        group = self.check_group(group)
        if item_ids.numel() and (int(item_ids.min()) < 0 or int(item_ids.max()) >= self.n_items):
            raise IndexError(f"item ids must lie in [0, {self.n_items})")
        rows, inverse = unique_rows(item_ids)
        device = self.side_nets[group].towers[self.modalities[0]].gates.device
        dtype = self.side_nets[group].towers[self.modalities[0]].gates.dtype
        states, present = {}, {}
        for m in self.modalities:
            table = self._states(m)
            picked = table.index_select(0, rows.to(table.device))
            if picked.device != device and device.type == "cuda":
                picked = picked.pin_memory()
            # float16 on disk, upcast after the (smaller) copy
            states[m] = picked.to(device, non_blocking=True).to(dtype)
            present[m] = getattr(self, f"present_{m}").index_select(0, rows.to(device))
        features = self.side_nets[group](states, present)
        return features.index_select(0, inverse.to(device)).reshape(*item_ids.shape, self.feature_dim)

    def copy_group(self, source: int, target: int) -> None:
        source, target = self.check_group(source), self.check_group(target)
        if source != target:
            self.side_nets[target].load_state_dict(self.side_nets[source].state_dict())

    def group_parameters(self, group: int) -> Iterator[nn.Parameter]:
        return self.side_nets[self.check_group(group)].parameters()

    def export_group(self, group: int, folder: Path) -> None:
        """``side_network.safetensors`` (the group's side network) and ``iisan_config.json``."""
        from safetensors.torch import save_file

        state = self.side_nets[self.check_group(group)].state_dict()
        tensors = {name: value.detach().cpu().contiguous() for name, value in state.items()}
        save_file(tensors, str(folder / "side_network.safetensors"))
        (folder / "iisan_config.json").write_text(json.dumps({"options": self.config, "layers": self.layers}, indent=1))

    def foundation_parameter_count(self) -> int:
        return self._foundation_params


@torch.no_grad()
def _fill_states(
    foundation: FoundationEncoder,
    store: ItemContentStore,
    layers: dict[str, list[int]],
    out: dict[str, np.ndarray],
    batch_size: int,
    show_progress: bool,
) -> None:
    """Run the frozen towers once over the catalogue and write the selected states to ``out``."""
    from tqdm.auto import tqdm

    was_training = foundation.training
    foundation.eval()
    limit = np.finfo(np.float16).max
    try:
        starts = range(0, store.n_items, batch_size)
        for start in tqdm(starts, desc="IISAN: caching frozen layer states", disable=not show_progress):
            rows = torch.arange(start, min(start + batch_size, store.n_items))
            batch = store.gather(rows, pin=foundation.device.type == "cuda")
            states = foundation.layer_states(batch, layers)
            for m, value in states.items():
                out[m][start : start + len(rows)] = value.float().clamp(-limit, limit).cpu().numpy().astype(np.float16)
    finally:
        foundation.train(was_training)

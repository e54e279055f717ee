"""PerPEFT idea 2 — per-group modules: each user group owns a PEFT module and a projector.

The PEFT side (one named adapter or IISAN side network per group) lives in
:mod:`recbole_perpeft.peft_backends`; this module adds the per-group projectors and the item
representation built from both:

    e_i^g = E_id[i] + w_g * projector_g(encoder_g(content_i))

(``w_g = content_weight``, fixed or learned per group.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from recbole_perpeft.peft_backends.base import GroupedItemEncoder


class Projector(nn.Module):
    """Linear(F -> 2h) -> LayerNorm -> ReLU -> Linear(2h -> h) -> LayerNorm (the paper's), times a weight.

    The weight is ``content_weight`` (the paper: a fixed 0.5), or a learned scalar starting there
    (``learn_content_weight``). The final LayerNorm gives the content term a norm near
    ``sqrt(h)``, far above the N(0, 0.02) ID embeddings', so a small learned weight lets
    training find the balance instead of saturating the logits from the first step.
    """

    def __init__(self, feature_dim: int, hidden_size: int, content_weight: float = 1.0,
                 learn_content_weight: bool = False) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(feature_dim, 2 * hidden_size),
            nn.LayerNorm(2 * hidden_size),
            nn.ReLU(),
            nn.Linear(2 * hidden_size, hidden_size),
            nn.LayerNorm(hidden_size),
        )
        self.content_weight = float(content_weight)
        self.weight = nn.Parameter(torch.tensor(float(content_weight))) if learn_content_weight else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weight = self.content_weight if self.weight is None else self.weight
        return weight * self.layers(features)


class GroupItemRepresentation(nn.Module):
    """Item representations under each user group's PEFT module and projector."""

    def __init__(
        self,
        encoder: GroupedItemEncoder,
        id_embedding: nn.Embedding,
        hidden_size: int,
        content_weight: float,
        learn_content_weight: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.id_embedding = id_embedding
        self.projectors = nn.ModuleList(
            Projector(encoder.feature_dim, hidden_size, content_weight, learn_content_weight)
            for _ in range(encoder.n_groups)
        )
        for group in range(1, encoder.n_groups):
            self.projectors[group].load_state_dict(self.projectors[0].state_dict())

    @property
    def n_groups(self) -> int:
        return self.encoder.n_groups

    def of_items(self, item_ids: torch.Tensor, group: int) -> torch.Tensor:
        """``[len(item_ids), h]`` representations of distinct items under ``group``."""
        content = self.encoder.encode(item_ids, group)
        projected = self.projectors[group](content.to(self.id_embedding.weight.dtype))
        return self.id_embedding(item_ids) + projected

    def of_rows(self, item_ids: torch.Tensor, row_groups: torch.Tensor) -> torch.Tensor:
        """Representations of ``item_ids`` (``[B, ...]``), row ``b`` under ``row_groups[b]``.

        Each distinct item is encoded once per group present in the batch.
        """
        out = None
        for group in torch.unique(row_groups).tolist():
            rows = (row_groups == group).nonzero().squeeze(1)
            ids = item_ids[rows]
            distinct, inverse = torch.unique(ids, return_inverse=True)
            reps = self.of_items(distinct, group)
            if out is None:
                out = reps.new_empty((*item_ids.shape, reps.shape[-1]))
            out[rows] = reps[inverse]
        return out

    @torch.no_grad()
    def table(self, group: int, n_items: int, batch_size: int,
              id_embedding: nn.Embedding | None = None) -> torch.Tensor:
        """``[n_items, h]``: the whole catalogue under ``group``, in large no-grad batches.

        ``id_embedding`` replaces the shared ID embeddings (a group served by its own kept copy).
        """
        id_embedding = self.id_embedding if id_embedding is None else id_embedding
        features = self.encoder.encode_all(group, batch_size=batch_size)
        device = id_embedding.weight.device
        ids = torch.arange(n_items, device=device)
        rows = []
        for start in range(0, n_items, batch_size):
            chunk = features[start : start + batch_size].to(device, id_embedding.weight.dtype)
            rows.append(self.projectors[group](chunk))
        return id_embedding(ids) + torch.cat(rows)

    def copy_group(self, source: int, target: int) -> None:
        """Start group ``target`` from group ``source``'s PEFT module and projector."""
        self.encoder.copy_group(source, target)
        self.projectors[target].load_state_dict(self.projectors[source].state_dict())

    def group_parameters(self, group: int) -> Iterator[nn.Parameter]:
        yield from self.encoder.group_parameters(group)
        yield from self.projectors[group].parameters()

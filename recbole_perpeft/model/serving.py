"""Serving a grouped recommender (:mod:`recbole_perpeft.model.protocol`): scoring histories under
their users' groups, and exporting every group's modules.

Serving: a known user keeps the group the model assigned; a new user is routed by the model
(``route_new_users``); each row is then scored by its group's model. Evaluation (the trainer)
and ``recommend`` both score through :meth:`GroupedRecommender.score`.

Export: one folder per formed group (the encoder adapter, the projector, and the group's own
backbone where per-group model selection kept one), the shared backbone and the grouping as
plain text, readable without this plugin.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recbole_perpeft.model.protocol import GroupedRecommender


def route(model: GroupedRecommender, item_seq: torch.Tensor, item_seq_len: torch.Tensor,
          users: Sequence[int | None]) -> torch.Tensor:
    """Each row's group: a known user's (internal id) from the table, a new user's (``None``)
    routed by the model from the history; 0 for everyone before users were grouped."""
    groups = torch.zeros(len(item_seq), dtype=torch.long, device=item_seq.device)
    if not model.is_personalised():
        return groups
    new = [row for row, user in enumerate(users) if user is None]
    if new:
        rows = torch.tensor(new, device=item_seq.device)
        groups[rows] = model.route_new_users(item_seq[rows], item_seq_len[rows])
    table = model.user_groups()
    for row, user in enumerate(users):
        if user is not None:
            groups[row] = table[user]
    return groups


@torch.no_grad()
def score_histories(model: GroupedRecommender, item_seq: torch.Tensor, item_seq_len: torch.Tensor,
                    users: Sequence[int | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, n_items] scores, [B] groups)``: every row scored by the model of its group (:func:`route`)."""
    groups = route(model, item_seq, item_seq_len, users)
    return model.score(item_seq, item_seq_len, groups), groups


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous CPU tensors that share no memory.
    return {name: value.detach().cpu().contiguous().clone() for name, value in state.items()}


def _write_group_tables(model: nn.Module, dataset, folder: Path, formed: int) -> None:
    user_tokens = dataset.field2id_token[dataset.uid_field]
    groups = model.user_groups().cpu().tolist()
    lines = ["user_id\tgroup"] + [f"{user_tokens[user]}\t{groups[user]}" for user in range(1, len(groups))]
    (folder / "user_groups.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    centroids = model.centroids[:formed].cpu().tolist()
    (folder / "centroids.tsv").write_text(
        "".join("\t".join(repr(float(x)) for x in row) + "\n" for row in centroids), encoding="utf-8"
    )


def _content_weight(projector: nn.Module) -> float:
    """The weight of a projector's output in the item representation (fixed or learned)."""
    learned = getattr(projector, "weight", None)
    return float(learned) if isinstance(learned, torch.Tensor) else float(getattr(projector, "content_weight", 1.0))


def _own_backbone(model: GroupedRecommender, group: int) -> nn.Module | None:
    """The backbone copy that serves ``group`` under per-group model selection; None: the shared one."""
    backbone = model.backbone_of(group)
    return None if backbone is model else backbone


def export_groups(model: nn.Module, dataset: Any, folder: Path) -> dict[str, Any]:
    """PerPEFT: one folder per formed group, the shared backbone, the grouping as text."""
    from safetensors.torch import save_file

    from recbole_perpeft.peft_backends.base import group_name

    items = model.items
    formed = model.formed_groups()
    groups = []
    for group in range(formed):
        group_dir = folder / group_name(group)
        group_dir.mkdir()
        items.encoder.export_group(group, group_dir)
        projector = items.projectors[group]
        save_file(_tensors(projector.state_dict()), str(group_dir / "projector.safetensors"))
        backbone_file = "backbone.safetensors"
        own = _own_backbone(model, group)
        if own is not None:
            backbone_file = f"{group_name(group)}/backbone.safetensors"
            save_file(_tensors(own.state_dict()), str(folder / backbone_file))
        groups.append({"group": group, "content_weight": _content_weight(projector), "backbone": backbone_file})
    shared = ("items.", "served.")
    grouping = {"group_of_user", "centroids"}
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith(shared) and k not in grouping}
    save_file(_tensors(backbone), str(folder / "backbone.safetensors"))
    _write_group_tables(model, dataset, folder, formed)
    return {
        "personalised": model.is_personalised(),
        "groups": groups,
        "item_input_scale": float(getattr(model, "input_scale", 1.0)),
        "item_representation": "item_embedding.weight[i] (from the group's backbone) + content_weight * "
                               "projector_g(foundation model with group g's adapter (content of item i)); "
                               "the backbone reads item_input_scale * representation + position embedding",
        "files": {
            "group_<g>/": "the group's encoder adapter (a peft adapter folder: adapter_config.json + "
                          "adapter_model.safetensors; IISAN: side_network.safetensors; none: nothing), "
                          "projector.safetensors, and backbone.safetensors when the group has its own",
            "backbone.safetensors": "the shared SASRec backbone and item ID embeddings",
            "user_groups.tsv": "raw user id -> group",
            "centroids.tsv": "one row per group: the centroid of its users' representations",
        },
    }


__all__ = ["export_groups", "route", "score_histories"]

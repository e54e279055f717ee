"""The one rule for items a user already has, shared by evaluation and ``recommend``.

Padding and the items of a user's history are never recommended: their scores become ``-inf``.
Evaluation spares one item per row, the held-out target: a user may come back to an item, and
masking the answer would make that repeat unrankable. (RecBole ranks a sequential model's past
items too; the paper's protocol masks them.) ``recommend`` has no target to spare.

The histories differ by where they come from, not by the rule: evaluation masks the user's
items in the split's dataset (``dataset.history``), ``recommend`` the history it is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def history_pairs(histories: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, item)`` for every item of every history (row = the history's position)."""
    counts = torch.tensor([len(items) for items in histories], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(len(histories)), counts)
    items = torch.tensor([item for items in histories for item in items], dtype=torch.long)
    return rows, items


def mask_seen_items(scores: torch.Tensor, rows: torch.Tensor, items: torch.Tensor,
                    targets: torch.Tensor | None = None) -> None:
    """Set ``scores[row, item]`` to ``-inf`` for padding and every ``(row, item)`` pair, in place,
    except a row's own ``targets`` item (evaluation)."""
    rows, items = rows.to(scores.device), items.to(scores.device)
    if targets is not None:
        keep = items != targets.to(scores.device)[rows]
        rows, items = rows[keep], items[keep]
    scores[:, 0] = -torch.inf
    scores[rows, items] = -torch.inf


__all__ = ["history_pairs", "mask_seen_items"]

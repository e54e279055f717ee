"""The interface of a PEFT backend: a foundation encoder with one named adapter per user group.

This is where PerPEFT's *per-group modules* live on the encoder side: group ``g`` owns the
adapter named ``group_name(g)``. With ``n_groups == 1`` it is plain (global) PEFT.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn


def group_name(group: int) -> str:
    """The adapter name of a user group."""
    return f"group_{group}"


class GroupedItemEncoder(nn.Module, ABC):
    """Encodes items with the adapter of one user group.

    Content (tokenised titles, processed images, or IISAN's cached hidden states) is held by the
    backend for every internal item id, so callers pass item ids only.
    """

    n_groups: int
    feature_dim: int
    #: Number of items (rows of the content, padding row 0 included).
    n_items: int

    @abstractmethod
    def encode(self, item_ids: torch.Tensor, group: int) -> torch.Tensor:
        """Features ``[len(item_ids), feature_dim]`` of the given items under ``group``'s adapter.

        Gradients flow into that group's adapter parameters only; the foundation model's own
        weights are frozen.
        """

    @abstractmethod
    def copy_group(self, source: int, target: int) -> None:
        """Make ``target``'s adapter an exact copy of ``source``'s (stage-3 init, regrouping)."""

    @abstractmethod
    def group_parameters(self, group: int) -> Iterator[nn.Parameter]:
        """The trainable parameters that belong to ``group``'s adapter."""

    def trainable_parameters_per_group(self) -> int:
        return sum(p.numel() for p in self.group_parameters(0))

    def export_group(self, group: int, folder: Path) -> None:
        """Write ``group``'s encoder module into the existing ``folder`` in its ecosystem's format.

        A backend without per-group weights writes nothing.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot export its groups")

    @abstractmethod
    def foundation_parameter_count(self) -> int:
        """Parameters of the frozen foundation model (for the overhead report)."""

    # -- shared helpers ---------------------------------------------------------------------------

    def check_group(self, group: int) -> int:
        if not 0 <= int(group) < self.n_groups:
            raise IndexError(f"group {group} out of range: this encoder has {self.n_groups} group(s)")
        return int(group)

    def parameter_report(self) -> dict[str, float]:
        """Trainable parameters per group and in total, against the frozen foundation model."""
        per_group = self.trainable_parameters_per_group()
        foundation = self.foundation_parameter_count()
        total = per_group * self.n_groups
        return {
            "n_groups": self.n_groups,
            "trainable_per_group": per_group,
            "trainable_total": total,
            "foundation_parameters": foundation,
            "overhead_share": total / foundation if foundation else float("nan"),
        }

    def encode_all(self, group: int, batch_size: int = 512) -> torch.Tensor:
        """Features of every item (row 0 = padding included) under ``group``, in no-grad batches.

        Runs in eval mode (no adapter dropout) and restores the previous mode afterwards.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                parts = [
                    self.encode(torch.arange(start, min(start + batch_size, self.n_items)), group)
                    for start in range(0, self.n_items, batch_size)
                ]
        finally:
            self.train(was_training)
        return torch.cat(parts, dim=0)

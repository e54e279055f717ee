"""What code outside ``model/`` may know of a recommender: the grouped-recommender protocol.

A *grouped* recommender (PerPEFT) partitions users into groups and scores every user with the
modules of their group. Checkpointing, export, ``recommend``, the CLI and the trainers ask a
model through the functions here, never by probing its attributes, so that what a grouped
model must provide is written down in one place:

* what a group is: an index in ``range(formed_groups())`` (at most ``n_groups``);
* the user -> group table (``user_groups()``, indexed by internal user id; ``group_of``);
* routing a user unseen at grouping time (``route_new_users``);
* the served per-group states (``backbone_of``: the backbone serving a group) and scoring rows
  under their groups' models (``score``);
* what the groups export (``export_groups``: see :mod:`recbole_perpeft.model.serving`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn


class GroupedRecommender(ABC):
    """A recommender whose users are split into groups, each served by its own modules."""

    #: Groups the model holds modules for.
    n_groups: int
    #: The groups of the last training batch (named when the loss diverges); set by the model.
    last_batch_groups: list[int] | None = None

    @abstractmethod
    def formed_groups(self) -> int:
        """How many groups exist now (1 before users were grouped)."""

    @abstractmethod
    def is_personalised(self) -> bool:
        """Whether users have been grouped (before that, every user is in group 0)."""

    @abstractmethod
    def user_groups(self) -> torch.Tensor:
        """``[n_users]``: the group of every internal user id (index 0 is padding)."""

    @abstractmethod
    def group_of(self, users: torch.Tensor) -> torch.Tensor:
        """The groups of internal user ids."""

    @abstractmethod
    def route_new_users(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Groups for users unseen at grouping time, from their histories alone."""

    @abstractmethod
    def backbone_of(self, group: int) -> nn.Module:
        """The module serving ``group``'s backbone: the model itself, or the group's own copy."""

    @abstractmethod
    def score(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, groups: torch.Tensor,
              items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of each row under its group's model: ``[B, n_items]`` (or ``[B]`` for ``items``)."""

    @abstractmethod
    def report(self) -> dict[str, Any]:
        """The groups and their parameter overhead, for the result record."""

    @abstractmethod
    def export_groups(self, dataset: Any, folder: Path) -> dict[str, Any]:
        """Write every formed group's modules and the grouping into ``folder``; the manifest."""


def is_grouped(model: nn.Module) -> bool:
    """Whether ``model`` follows the grouped-recommender protocol."""
    return isinstance(model, GroupedRecommender)


def is_personalised(model: nn.Module) -> bool:
    """Whether ``model`` scores users by their own group (a grouped model after grouping)."""
    return is_grouped(model) and model.is_personalised()


def groups_of_last_batch(model: nn.Module) -> list[int] | None:
    """The groups of ``model``'s last training batch; ``None`` for a model without groups."""
    return model.last_batch_groups if is_grouped(model) else None


def model_report(model: nn.Module) -> dict[str, Any]:
    """What ``model`` adds to the result record (a grouped model: its groups and parameter overhead)."""
    return model.report() if is_grouped(model) else {}


def dataset_class_of(model_class: type) -> type | None:
    """The dataset class ``model_class`` declares (``dataset_class``), else ``None`` (RecBole's choice)."""
    return getattr(model_class, "dataset_class", None)


__all__ = [
    "GroupedRecommender",
    "dataset_class_of",
    "groups_of_last_batch",
    "is_grouped",
    "is_personalised",
    "model_report",
]

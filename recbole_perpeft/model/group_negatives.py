"""PerPEFT idea 3 — group negatives, the paper's "specialised training technique".

In the personalised stage a group's negatives are drawn from the items that the group's users
interacted with in training (not from the whole catalogue), so each group's module learns to
separate items *within its own interest*. A user's own training items are never negatives
(membership is tested on item ids, not list positions as in the reference).
"""

from __future__ import annotations

import torch

from recbole_perpeft.data.sequential import UserItems

_MAX_REDRAWS = 20


class GroupNegativeSampler:
    """Draws negatives from a group's item pool or from all items.

    Per position (``sample``: the paper's BCE with one negative) or shared by a batch
    (``shared``: the sampled-softmax loss).
    """

    def __init__(self, history: UserItems, n_items: int) -> None:
        self.n_items = n_items
        counts = history.indptr[1:] - history.indptr[:-1]
        users = torch.repeat_interleave(torch.arange(len(counts)), counts)
        self.history = history
        # Sorted (user, item) keys: membership is one searchsorted per draw.
        self.history_keys = users * n_items + history.items
        self.pools: torch.Tensor | None = None
        self.pool_sizes: torch.Tensor | None = None

    def set_groups(self, group_of_user: torch.Tensor, n_groups: int) -> list[int]:
        """Build each group's pool: the training items of the group's users. Returns pool sizes."""
        counts = self.history.indptr[1:] - self.history.indptr[:-1]
        users = torch.repeat_interleave(torch.arange(len(counts)), counts)
        groups = group_of_user.cpu()[users]
        pools = [torch.unique(self.history.items[groups == g]) for g in range(n_groups)]
        # A group whose users have no training item falls back to the whole catalogue.
        pools = [p if len(p) > 1 else torch.arange(1, self.n_items) for p in pools]
        width = max(len(p) for p in pools)
        self.pools = torch.zeros(n_groups, width, dtype=torch.long)
        for g, pool in enumerate(pools):
            self.pools[g, : len(pool)] = pool
        self.pool_sizes = torch.tensor([len(p) for p in pools])
        return self.pool_sizes.tolist()

    def _draw(self, groups: torch.Tensor | None, shape: tuple[int, ...],
              generator: torch.Generator | None) -> torch.Tensor:
        uniform = torch.rand(shape, generator=generator)
        if groups is None:
            return 1 + (uniform * (self.n_items - 1)).long()
        sizes = self.pool_sizes[groups].view(-1, *([1] * (len(shape) - 1)))
        index = (uniform * sizes).long()
        return self.pools[groups.view(-1, *([1] * (len(shape) - 1))).expand(shape), index]

    def shared(self, count: int, group: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` negatives shared by a whole batch: from ``group``'s pool, else all items.

        Shared negatives are not filtered against any one user's history (the batch shares
        them); the sampled-softmax loss also uses every other item the step encodes.
        """
        if group is not None and self.pools is None:
            raise RuntimeError("set_groups() must be called before sampling group negatives")
        groups = None if group is None else torch.full((count,), int(group), dtype=torch.long)
        return self._draw(groups, (count,), generator)

    def is_history(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users.view(-1, *([1] * (items.dim() - 1))) * self.n_items + items
        position = torch.searchsorted(self.history_keys, keys).clamp(max=len(self.history_keys) - 1)
        return self.history_keys[position] == keys

    def sample(
        self,
        users: torch.Tensor,
        shape: tuple[int, ...],
        groups: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Negatives of shape ``shape`` (first dim = users) not in each user's training items.

        ``groups`` given: drawn from those groups' pools (``set_groups`` first); else uniform
        over all items. Draws that hit a user's own item are redrawn; where a user's items fill
        most of their group's pool, the draws still clashing after a few rounds come from the
        whole catalogue instead, so no negative is ever one of the user's training items
        (short of a user who interacted with every item).
        """
        users = users.cpu().long()
        groups = None if groups is None else groups.cpu().long()
        if groups is not None and self.pools is None:
            raise RuntimeError("set_groups() must be called before sampling group negatives")
        negatives = self._draw(groups, shape, generator)
        for round_ in range(2 * _MAX_REDRAWS):
            clash = self.is_history(users, negatives)
            if not clash.any():
                break
            from_pool = groups if round_ < _MAX_REDRAWS else None
            redraw = self._draw(from_pool, shape, generator)
            negatives = torch.where(clash, redraw, negatives)
        return negatives

"""The sequential dataset every sequential model of the CLI uses (plugin and built-in).

On top of RecBole's ``SequentialDataset`` it

* records each user's history at evaluation time, so full ranking can exclude the items a
  user already interacted with (the paper's protocol; RecBole does not do this for sequential
  models), and
* offers the paper's *training unit*: one sample per user (the last ``MAX_ITEM_LIST_LENGTH``
  training items, loss at every position) instead of RecBole's prefix augmentation (one
  sample per interaction, loss at the last position); or ``window``: a user's training
  sequence cut into consecutive windows of ``MAX_ITEM_LIST_LENGTH`` targets, so every
  training interaction is a target once per epoch, not only the last window's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset

from recbole_perpeft.config_schema import TRAIN_UNITS
from recbole_perpeft.errors import ConfigError, DataWarning


@dataclass
class UserItems:
    """A sparse user -> items table (CSR over internal ids)."""

    indptr: torch.Tensor  # [n_users + 1]
    items: torch.Tensor  # [nnz], sorted within each user

    @classmethod
    def from_pairs(cls, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int):
        keys = torch.unique(users.long() * n_items + items.long())  # sorted, deduplicated
        key_users = torch.div(keys, n_items, rounding_mode="floor")
        counts = torch.bincount(key_users, minlength=n_users)
        indptr = torch.zeros(n_users + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(counts, 0)
        return cls(indptr=indptr, items=keys % n_items)

    def of_user(self, user: int) -> torch.Tensor:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def pairs_of(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(row, item)`` for every item of every user in ``users`` (row = position in ``users``)."""
        users = users.cpu().long()
        starts = self.indptr[users]
        counts = self.indptr[users + 1] - starts
        rows = torch.repeat_interleave(torch.arange(len(users)), counts)
        first_of_row = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        positions = torch.arange(int(counts.sum())) - first_of_row + starts[rows]
        return rows, self.items[positions]


def sequence_items(dataset: SequentialDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``(user, item)`` a split's rows mention: input sequences and targets."""
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    item_list = dataset.inter_feat[iid_field + dataset.config["LIST_SUFFIX"]]
    users = dataset.inter_feat[uid_field]
    mask = item_list != 0
    list_users = users.unsqueeze(1).expand_as(item_list)[mask]
    return (
        torch.cat([list_users, users]),
        torch.cat([item_list[mask], dataset.inter_feat[iid_field]]),
    )


def last_row_per_user(dataset: SequentialDataset) -> SequentialDataset:
    """Keep each user's last training row: the paper's one sample per user per epoch."""
    users = dataset.inter_feat[dataset.uid_field]
    is_last = torch.ones(len(users), dtype=torch.bool)
    is_last[:-1] = users[1:] != users[:-1]
    return dataset.copy(dataset.inter_feat[is_last.nonzero().squeeze(1)])


def window_rows(dataset: SequentialDataset, window: int) -> SequentialDataset:
    """Keep every ``window``-th training row of each user, counted back from the last.

    Row ``t`` of a user (prefix augmentation: inputs are the ``window`` items before target
    ``t``) carries, with a loss at every position, the targets ``t - window + 1 .. t``; the kept
    rows therefore cover each training target exactly once.
    """
    users = dataset.inter_feat[dataset.uid_field]
    is_last = torch.ones(len(users), dtype=torch.bool)
    is_last[:-1] = users[1:] != users[:-1]
    last_rows = is_last.nonzero().squeeze(1)
    first = torch.ones(len(users), dtype=torch.long)
    first[1:] = (users[1:] != users[:-1]).long()
    run = torch.cumsum(first, 0) - 1  # which user's run each row belongs to
    rows_from_end = last_rows[run] - torch.arange(len(users))
    return dataset.copy(dataset.inter_feat[(rows_from_end % window == 0).nonzero().squeeze(1)])


#: ``train_unit: auto`` trains on prefixes where windows would shorten the history of more than
#: this share of the training targets (ml-100k: 85 %; mmdemo 42 %, Amazon Scientific 13 %).
AUTO_PREFIX_SHARE = 0.5


def window_cut_share(train_lengths: np.ndarray, window: int) -> float:
    """The share of training targets that see fewer earlier items in a window than in a prefix row.

    A user's ``L`` training items give targets ``1 .. L-1``. A prefix row shows target ``j`` its
    last ``min(j, window)`` items; in windows (counted back from the last target, see
    :func:`window_rows`) a target sees only the items of its own window before it, so the first
    targets of every window but the oldest lose history.
    """
    lengths = np.asarray(train_lengths, dtype=np.int64)
    lengths = lengths[lengths >= 2]
    if len(lengths) == 0:
        return 0.0
    per_user = lengths - 1
    user_length = np.repeat(lengths, per_user)
    offsets = np.repeat(np.cumsum(per_user) - per_user, per_user)
    target = np.arange(int(per_user.sum())) - offsets + 1  # j = 1 .. L-1
    windows_back = (user_length - 1 - target) // window
    last_target = user_length - 1 - windows_back * window
    first_input = np.maximum(0, last_target - window)
    seen_in_window = target - first_input
    seen_in_prefix = np.minimum(target, window)
    return float((seen_in_window < seen_in_prefix).mean())


def resolve_train_unit(config, dataset: SequentialDataset) -> dict | None:
    """Replace ``train_unit: auto`` in ``config`` by ``prefix`` or ``window``; what was chosen and why.

    ``prefix`` where windows would shorten the history of more than :data:`AUTO_PREFIX_SHARE` of
    the training targets (long user histories), with batches of ``train_batch_size`` x
    ``MAX_ITEM_LIST_LENGTH`` rows: as many targets a step as a batch of windows, so an epoch takes
    as many steps. Else ``window``. Leave-one-out is assumed: a user's last two items are held out.
    """
    if config["train_unit"] != "auto":
        return None
    window = int(config["MAX_ITEM_LIST_LENGTH"])
    counts = np.bincount(np.asarray(dataset.inter_feat[dataset.uid_field], dtype=np.int64))
    share = window_cut_share(counts[counts > 0] - 2, window)
    unit = "prefix" if share > AUTO_PREFIX_SHARE else "window"
    batch = int(config["train_batch_size"]) * (window if unit == "prefix" else 1)
    config["train_unit"], config["train_batch_size"] = unit, batch
    choice = {"train_unit": unit, "targets_shortened_by_windows": round(share, 4), "train_batch_size": batch}
    dataset.logger.info(
        f"train_unit: auto -> {unit}: windows of {window} would shorten the history of {share:.0%} of the "
        f"training targets (prefix above {AUTO_PREFIX_SHARE:.0%})"
        + (f"; {batch} rows a batch, the targets of {batch // window} windows" if unit == "prefix" else "")
    )
    return choice


class PluginSequentialDataset(SequentialDataset):
    """``SequentialDataset`` with evaluation histories and a selectable training unit."""

    @cached_property
    def history(self) -> UserItems:
        """Every item of every user. A split replaces it by the items before its own targets
        (``build``); the whole dataset's serves a restored model, which trains on none of it."""
        users = torch.as_tensor(np.asarray(self.inter_feat[self.uid_field]), dtype=torch.long)
        items = torch.as_tensor(np.asarray(self.inter_feat[self.iid_field]), dtype=torch.long)
        return UserItems.from_pairs(users, items, self.user_num, self.item_num)

    def build(self):
        self._report_short_users()
        self.train_unit_choice = resolve_train_unit(self.config, self)
        train, valid, test = super().build()
        n_users, n_items = self.user_num, self.item_num
        train_users, train_items = sequence_items(train)
        # Validation ranks after the training items; the test also after the validation item.
        train.history = UserItems.from_pairs(train_users, train_items, n_users, n_items)
        valid.history = train.history
        test.history = UserItems.from_pairs(
            torch.cat([train_users, valid.inter_feat[self.uid_field]]),
            torch.cat([train_items, valid.inter_feat[self.iid_field]]),
            n_users,
            n_items,
        )
        train_unit = self.config["train_unit"] or "prefix"
        if train_unit not in TRAIN_UNITS:
            raise ConfigError(f"train_unit must be one of {TRAIN_UNITS}, got '{train_unit}'")
        if train_unit in ("user", "window"):
            history = train.history
            if train_unit == "user":
                train = last_row_per_user(train)
            else:
                train = window_rows(train, self.config["MAX_ITEM_LIST_LENGTH"])
            train.history = history
        return [train, valid, test]

    def _report_short_users(self) -> int:
        """Count users too short for leave-one-out (< 3 interactions): they lack a training row."""
        users = torch.as_tensor(np.asarray(self.inter_feat[self.uid_field]), dtype=torch.long)
        counts = torch.bincount(users, minlength=self.user_num)[1:]
        short = int(((counts > 0) & (counts < 3)).sum())
        if short:
            self.logger.warning(
                f"{short} users have fewer than 3 interactions: leave-one-out gives them no training "
                "sample (and those with 1 no validation either); filter them with "
                "user_inter_num_interval=\"[3,inf)\" if that is not wanted"
            )
        return short

    def _remove_duplication(self):
        self._drop_repeated_rows()
        super()._remove_duplication()

    def _drop_repeated_rows(self) -> int:
        """Drop repeated (user, item, timestamp) rows, keeping the first; warn with the counts.

        A repeated row is one event recorded twice (an export that appended a file to itself, a
        join that fanned out). Kept, it leaks the answer: with every row doubled, a user's
        validation and test targets are the same item and hit@10 reaches 1.0. Repeated (user,
        item) pairs at other times are real re-consumption and stay.
        """
        fields = [self.uid_field, self.iid_field, self.time_field]
        if not all(field and field in self.inter_feat for field in fields):
            return 0  # no time column loaded: a repeat cannot be told from a re-consumption
        repeated = self.inter_feat.duplicated(subset=fields, keep="first")
        dropped = int(repeated.sum())
        if dropped:
            before = len(self.inter_feat)
            first = self.inter_feat[repeated].iloc[0]
            example = f"e.g. user {first[self.uid_field]}, item {first[self.iid_field]} at {first[self.time_field]}"
            if self.benchmark_filename_list:
                # Pre-split files: the split is the row counts of each file, which dropping would shift.
                message = (f"{self.dataset_name}: {dropped} of {before} interaction rows repeat an earlier row's "
                           f"(user, item, timestamp) ({example}); kept, because benchmark_filename gives the "
                           "split by row counts: remove them from the files")
                dropped = 0
            else:
                message = (f"{self.dataset_name}: {dropped} of {before} interaction rows repeat an earlier row's "
                           f"(user, item, timestamp) and were dropped, {before - dropped} remain ({example})")
                self.inter_feat = self.inter_feat[~repeated]
            self.logger.warning(message)
            warnings.warn(message, DataWarning, stacklevel=2)
        return dropped

    def _filter_by_inter_num(self):
        # RecBole filters silently; say how many users and items the intervals removed.
        users_before, items_before = self._distinct(self.uid_field), self._distinct(self.iid_field)
        interactions_before = len(self.inter_feat)
        super()._filter_by_inter_num()
        removed = (
            users_before - self._distinct(self.uid_field),
            items_before - self._distinct(self.iid_field),
            interactions_before - len(self.inter_feat),
        )
        if any(removed):
            self.logger.warning(
                f"interaction-count filter (user_inter_num_interval="
                f"{self.config['user_inter_num_interval']}, item_inter_num_interval="
                f"{self.config['item_inter_num_interval']}) removed {removed[0]} users, "
                f"{removed[1]} items and {removed[2]} interactions"
            )

    def _distinct(self, field: str) -> int:
        return int(self.inter_feat[field].nunique()) if field in self.inter_feat else 0

"""The one history-masking rule of evaluation and recommend (recbole_perpeft.seen_items)."""

from __future__ import annotations

import torch

from recbole_perpeft.seen_items import history_pairs, mask_seen_items


def test_history_items_and_padding_are_masked():
    scores = torch.zeros(2, 6)
    rows, items = history_pairs([[1, 3], [2, 2, 5]])
    assert rows.tolist() == [0, 0, 1, 1, 1] and items.tolist() == [1, 3, 2, 2, 5]
    mask_seen_items(scores, rows, items)
    assert torch.isinf(scores).nonzero().tolist() == [[0, 0], [0, 1], [0, 3], [1, 0], [1, 2], [1, 5]]


def test_evaluation_spares_each_rows_target_even_when_it_is_a_repeat():
    scores = torch.zeros(2, 6)
    rows, items = history_pairs([[1, 3], [2, 4]])
    mask_seen_items(scores, rows, items, targets=torch.tensor([3, 5]))
    assert torch.isinf(scores).nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 2], [1, 4]]


def test_no_history_masks_padding_only():
    scores = torch.ones(1, 4)
    mask_seen_items(scores, *history_pairs([]))
    assert scores.tolist() == [[-torch.inf, 1.0, 1.0, 1.0]]

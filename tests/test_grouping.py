"""Grouping (k-means on user representations) and group negatives, on controlled inputs."""

from __future__ import annotations

import logging

import torch

from recbole_perpeft.data.sequential import UserItems
from recbole_perpeft.model.group_negatives import GroupNegativeSampler
from recbole_perpeft.model.grouping import cluster_users, match_groups, nearest_group


def _blobs(sizes, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[: len(sizes)] * 10
    points = torch.cat([c + torch.randn(n, dim, generator=generator) for c, n in zip(centres, sizes)])
    truth = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return points, truth


def test_kmeans_recovers_blobs_and_honours_n_groups():
    points, truth = _blobs([30, 20, 10])
    users = torch.arange(1, len(points) + 1)
    grouping = cluster_users(users, points, n_groups=3, seed=7)
    assert grouping.n_groups == 3
    assert grouping.sizes() == [30, 20, 10]  # renumbered largest first
    # Every true blob maps to exactly one group.
    for blob in range(3):
        assert len(torch.unique(grouping.group_of_user[truth == blob])) == 1


def test_kmeans_is_seeded():
    points, _ = _blobs([25, 25, 25, 25], seed=3)
    users = torch.arange(len(points))
    first = cluster_users(users, points, n_groups=4, seed=11)
    second = cluster_users(users, points, n_groups=4, seed=11)
    assert torch.equal(first.group_of_user, second.group_of_user)
    assert torch.equal(first.centroids, second.centroids)


def test_tiny_groups_are_merged_with_a_log_line(caplog):
    points, _ = _blobs([40, 40, 2])
    with caplog.at_level(logging.WARNING):
        grouping = cluster_users(torch.arange(len(points)), points, n_groups=3, seed=0, min_group_size=5)
    assert grouping.n_groups == 2 and grouping.merged == 1
    assert sum(grouping.sizes()) == 82 and min(grouping.sizes()) >= 5
    assert "below min_group_size" in caplog.text


def test_more_groups_than_users():
    points, _ = _blobs([3])
    grouping = cluster_users(torch.arange(3), points, n_groups=8, seed=0)
    assert grouping.n_groups == 3


def test_new_user_goes_to_nearest_centroid():
    centroids = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    assert nearest_group(torch.tensor([[9.0, 8.0], [1.0, -1.0]]), centroids).tolist() == [1, 0]


def test_match_groups_by_member_overlap():
    old = torch.tensor([0, 0, 0, 1, 1, 2])
    new = torch.tensor([1, 1, 1, 0, 0, 0])
    assert match_groups(old, new, n_old=3, n_new=2).tolist() == [1, 0]


def _history():
    # users 1..4 over items 1..9; user 0 is RecBole's padding user
    pairs = {1: [1, 2, 3], 2: [2, 3, 4], 3: [6, 7], 4: [7, 8, 9]}
    users = torch.tensor([u for u, items in pairs.items() for _ in items])
    items = torch.tensor([i for items in pairs.values() for i in items])
    return UserItems.from_pairs(users, items, n_users=5, n_items=10), pairs


def test_negatives_never_hit_the_users_own_items():
    history, pairs = _history()
    sampler = GroupNegativeSampler(history, n_items=10)
    users = torch.tensor([1, 2, 3, 4] * 50)
    negatives = sampler.sample(users, (200, 6), generator=torch.Generator().manual_seed(0))
    for user, row in zip(users.tolist(), negatives):
        assert not set(row.tolist()) & set(pairs[user])
    assert negatives.min() >= 1 and negatives.max() <= 9


def test_group_negatives_come_from_the_groups_items():
    history, pairs = _history()
    sampler = GroupNegativeSampler(history, n_items=10)
    group_of_user = torch.tensor([0, 0, 0, 1, 1])
    assert sampler.set_groups(group_of_user, 2) == [4, 4]  # {1,2,3,4} and {6,7,8,9}
    users = torch.tensor([1, 3] * 100)
    negatives = sampler.sample(users, (200, 5), groups=group_of_user[users],
                               generator=torch.Generator().manual_seed(1))
    for user, own in ((1, {1, 2, 3}), (3, {6, 7})):
        drawn = negatives[users == user]
        assert not set(drawn.unique().tolist()) & own
        pool = {4} if user == 1 else {8, 9}
        # From the group's pool, except the few that clashed 20 times (then: the catalogue).
        in_pool = torch.isin(drawn, torch.tensor(sorted(pool))).float().mean()
        assert in_pool > (0.97 if user == 1 else 0.999)

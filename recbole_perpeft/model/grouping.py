"""PerPEFT idea 1 — grouping users by interest.

A user's representation is the backbone's last hidden state over their training sequence,
computed with the *global* (stage-1) item representations; users are clustered with k-means,
seeded from the run's ``seed``. Fixes over the reference implementation: the number of groups
is honoured, users without a representation are never clustered (they are assigned to the
nearest centroid of their own, or to the largest group), and empty or tiny clusters are merged
into their nearest neighbour with a log line instead of crashing a sampler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

logger = logging.getLogger(__name__)


@dataclass
class Grouping:
    """The result of clustering: a group per represented user and the group centroids."""

    users: torch.Tensor  # [n] internal user ids that had a representation
    group_of_user: torch.Tensor  # [n] group of each of those users, in 0..n_groups-1
    centroids: torch.Tensor  # [n_groups, dim]
    merged: int  # clusters merged away for being smaller than the minimum size

    @property
    def n_groups(self) -> int:
        return int(self.centroids.shape[0])

    def sizes(self) -> list[int]:
        return torch.bincount(self.group_of_user, minlength=self.n_groups).tolist()


def cluster_users(
    users: torch.Tensor,
    representations: torch.Tensor,
    n_groups: int,
    seed: int,
    min_group_size: int = 1,
) -> Grouping:
    """k-means on user representations, then merge clusters below ``min_group_size``.

    Groups are renumbered by decreasing size so that group 0 is the largest.
    """
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    n_users = len(users)
    if n_users == 0:
        raise ValueError("no user has a representation to cluster")
    k = min(n_groups, n_users)
    if k < n_groups:
        logger.warning(f"only {n_users} users to cluster: {k} groups instead of {n_groups}")
    points = representations.detach().double().cpu().numpy()
    if k == 1:
        labels = np.zeros(n_users, dtype=np.int64)
        centres = points.mean(axis=0, keepdims=True)
    else:
        kmeans = KMeans(n_clusters=k, random_state=seed, n_init=10)
        labels = kmeans.fit_predict(points).astype(np.int64)
        centres = kmeans.cluster_centers_
    labels, centres, merged = _merge_small_clusters(points, labels, centres, min_group_size)
    # Largest first, so the numbering does not depend on k-means' arbitrary labels.
    sizes = np.bincount(labels, minlength=len(centres))
    order = np.argsort(-sizes, kind="stable")
    relabel = np.empty_like(order)
    relabel[order] = np.arange(len(order))
    return Grouping(
        users=users.cpu().long(),
        group_of_user=torch.from_numpy(relabel[labels]).long(),
        centroids=torch.from_numpy(centres[order]).float(),
        merged=merged,
    )


def _merge_small_clusters(points, labels, centres, min_size):
    merged = 0
    while len(centres) > 1:
        sizes = np.bincount(labels, minlength=len(centres))
        smallest = int(np.argmin(sizes))
        if sizes[smallest] >= min_size:
            break
        members = labels == smallest
        keep = [c for c in range(len(centres)) if c != smallest]
        remaining = centres[keep]
        if members.any():
            nearest = _nearest(points[members], remaining)
        else:
            nearest = np.zeros(0, dtype=np.int64)
        # Renumber the kept clusters 0..k-2 and move the members to their nearest one.
        new_index = np.full(len(centres), -1, dtype=np.int64)
        new_index[keep] = np.arange(len(keep))
        labels = new_index[labels]
        labels[members] = nearest
        centres = np.stack([points[labels == c].mean(axis=0) for c in range(len(keep))])
        logger.warning(
            f"group of {int(sizes[smallest])} users is below min_group_size={min_size}: "
            f"merged into the nearest groups ({len(keep)} groups remain)"
        )
        merged += 1
    return labels, centres, merged


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    distances = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return distances.argmin(axis=1)


def nearest_group(representations: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The group of users unseen at grouping time: the nearest centroid."""
    return torch.cdist(representations.float(), centroids.float().to(representations.device)).argmin(1)


def match_groups(old_group_of_user: torch.Tensor, new_group_of_user: torch.Tensor,
                 n_old: int, n_new: int) -> torch.Tensor:
    """For each new group, the old group sharing the most members (for periodic regrouping).

    The new group then starts from that old group's modules.
    """
    overlap = torch.zeros(n_new, n_old, dtype=torch.long)
    overlap.index_put_(
        (new_group_of_user.long(), old_group_of_user.long()),
        torch.ones(len(new_group_of_user), dtype=torch.long),
        accumulate=True,
    )
    return overlap.argmax(dim=1)


def project_2d(
    representations: torch.Tensor, groups: torch.Tensor, centroids: torch.Tensor, seed: int, max_points: int = 2000
) -> dict:
    """A 2-D PCA view of user representations and centroids, for plots (plain lists).

    At most ``max_points`` users, drawn with ``seed``; component signs are fixed (largest
    loading positive) so the same run always draws the same picture.
    """
    points = representations.detach().double().cpu().numpy()
    mean = points.mean(axis=0)
    _, singular, components = np.linalg.svd(points - mean, full_matrices=False)
    components = components[:2]
    components *= np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])[:, None]
    variance = singular**2
    keep = np.arange(len(points))
    if len(points) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(points), max_points, replace=False))
    xy = (points[keep] - mean) @ components.T
    centres = (centroids.detach().double().cpu().numpy() - mean) @ components.T
    pad = np.zeros((len(xy), 2))
    pad[:, : xy.shape[1]] = xy
    return {
        "x": pad[:, 0].round(5).tolist(),
        "y": pad[:, 1].round(5).tolist(),
        "group": groups[keep].tolist(),
        "centroids": centres.round(5).tolist(),
        "explained_variance": (variance[:2] / max(variance.sum(), 1e-12)).round(4).tolist(),
    }


def grouping_quality(groups: torch.Tensor, truth: list[str]) -> dict[str, float]:
    """Agreement of a grouping with known user segments (e.g. mmdemo's ``groups.tsv``).

    ``purity``: the share of users whose group's most common segment is their own;
    ``nmi``: normalised mutual information (1 = the segments exactly, 0 = independent).
    """
    groups_np = groups.cpu().numpy()
    labels = np.unique(np.asarray(truth), return_inverse=True)[1]
    counts = np.zeros((int(groups_np.max()) + 1, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (groups_np, labels), 1)
    return {
        "purity": round(float(counts.max(axis=1).sum() / max(len(labels), 1)), 4),
        "nmi": round(float(normalized_mutual_info_score(labels, groups_np)), 4),
        "users": len(labels),
    }


def read_segments(path) -> dict[str, str]:
    """Raw user id -> known segment, from a tab-separated file with a header line
    (first column the user id, second the segment)."""
    segments = {}
    with open(path, encoding="utf-8") as lines:
        next(lines, None)
        for line in lines:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 2 and fields[0]:
                segments[fields[0]] = fields[1]
    return segments

"""Runs are told apart by identity: resume never touches another run, checkpoints refuse other vocabularies."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from recbole_perpeft.errors import CheckpointError, ConfigError
from recbole_perpeft.quick_start import run_recbole_perpeft
from recbole_perpeft.recommend import Recommender

TINY_SASREC = {"hidden_size": 8, "inner_size": 8, "n_layers": 1, "n_heads": 1, "train_batch_size": 256,
               "show_progress": False, "state": "ERROR", "plots": False, "topk": [5], "valid_metric": "NDCG@5",
               "metrics": ["NDCG", "Hit"]}


def _write_dataset(root, name, seed, rename=None):
    """``root/name/name.inter``: 40 users, 8 interactions each over 30 items; ``rename`` maps item ids."""
    rng = random.Random(seed)
    folder = root / name
    folder.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for time, (user, _) in enumerate((u, k) for u in range(40) for k in range(8)):
        item = f"i{rng.randrange(30)}"
        lines.append(f"u{user}\t{(rename or {}).get(item, item)}\t{time}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return root


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.pth"))}


def test_two_runs_on_different_datasets_share_saved_without_touching_each_other(tmp_path):
    data = _write_dataset(_write_dataset(tmp_path / "data", "content", seed=1), "base", seed=2)
    first = run_recbole_perpeft("SASRec", "content", config_dict={**TINY_SASREC, "data_path": str(data), "epochs": 2})
    content_files = _digests(tmp_path / "saved")
    assert len(content_files) == 2  # its best checkpoint and its resume file

    # the newest resume file in saved/ is content's: base's --resume=latest must not take it
    with pytest.raises(ConfigError, match=r"no resume file of this run \(SASRec on base.*SASRec on content"):
        run_recbole_perpeft("SASRec", "base", config_dict={**TINY_SASREC, "data_path": str(data), "epochs": 2},
                            resume="latest")
    second = run_recbole_perpeft("SASRec", "base", config_dict={**TINY_SASREC, "data_path": str(data), "epochs": 2})
    assert second["checkpoint"] != first["checkpoint"]
    base_last = second["checkpoint"][: -len(".pth")] + ".last.pth"

    # content's files are made the newest: recency alone would pick them
    later = os.path.getmtime(base_last) + 60
    for name in content_files:
        os.utime(tmp_path / "saved" / name, (later, later))
    resumed = run_recbole_perpeft("SASRec", "base", config_dict={**TINY_SASREC, "data_path": str(data), "epochs": 3},
                                  resume="latest")
    assert resumed["checkpoint"] == second["checkpoint"]  # continued in base's own files
    assert len(resumed["train_loss"]) == 3
    after = _digests(tmp_path / "saved")
    assert {name: after[name] for name in content_files} == content_files  # content untouched
    assert len(after) == 4

    # the other way round, by path: refused with one line naming both runs, nothing written
    with pytest.raises(CheckpointError, match=r"belongs to another run: SASRec on base .*SASRec on content"):
        run_recbole_perpeft("SASRec", "content", config_dict={**TINY_SASREC, "data_path": str(data), "epochs": 3},
                            resume=base_last)
    # same dataset, other settings (shape of the model): not this run either
    with pytest.raises(ConfigError, match="no resume file of this run"):
        run_recbole_perpeft("SASRec", "content", config_dict={**TINY_SASREC, "data_path": str(data), "epochs": 3,
                                                              "hidden_size": 16}, resume="latest")
    assert _digests(tmp_path / "saved") == after


def test_a_checkpoint_refuses_a_dataset_with_other_item_ids(tmp_path):
    data = _write_dataset(tmp_path / "data", "shop", seed=3)
    record = run_recbole_perpeft("SASRec", "shop", config_dict={**TINY_SASREC, "data_path": str(data), "epochs": 1})
    same = Recommender.from_checkpoint(record["checkpoint"])
    assert len(same.recommend(["i1", "i2"], k=3).items) == 3
    # the same file names and shapes, item meanings permuted: the embeddings would score other items
    permuted = {f"i{k}": f"i{(k * 7 + 3) % 30}" for k in range(30)}
    other = _write_dataset(tmp_path / "other", "shop", seed=3, rename=permuted)
    with pytest.raises(CheckpointError, match="other item ids than the dataset loaded now"):
        Recommender.from_checkpoint(record["checkpoint"], data_path=str(other))

"""The throughput and reference benchmarks' own logic (their measurements run in benchmarks/)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from benchmarks.common import last_flag_wins
from benchmarks.reference import LAUNCHER, NAME, personalised_seconds, write_reference_layout
from benchmarks.throughput import best_epoch_score, compare_runs, markdown, time_to_reach
from recbole_perpeft.data.mmdemo import generate_mmdemo


def test_variant_flags_replace_the_shared_ones_of_the_same_key():
    assert last_flag_wins(["--a=1", "--b=2", "--b=3", "--c=4"]) == ["--a=1", "--b=3", "--c=4"]


def test_time_to_reach_counts_training_seconds_until_the_first_good_validation():
    run = {"epoch_seconds": [10.0, 20.0, 30.0], "valid_scores": [[0, 0.1], [1, 0.3], [2, 0.2]]}
    assert time_to_reach(run, 0.25) == 30.0
    assert time_to_reach(run, 0.5) is None


def test_the_quality_target_is_a_single_epochs_score_not_the_served_one():
    # per-group selection serves a mix of epochs whose validation no single epoch reaches
    run = {"epoch_seconds": [10.0, 20.0], "valid_scores": [[0, 0.1], [1, 0.3]], "best_valid_ndcg@20": 0.35}
    assert best_epoch_score(run) == 0.3
    assert time_to_reach(run, best_epoch_score(run)) == 30.0


def test_whole_runs_are_compared_to_the_baselines_best_epoch_and_tabled():
    def run(seconds, scores, served):
        return {"epoch_s": sum(seconds) / len(seconds), "epoch_seconds": seconds, "best_valid_ndcg@20": served,
                "valid_scores": list(enumerate(scores)), "test_ndcg@20": served - 0.01}

    runs = {"baseline": run([100.0, 100.0], [0.01, 0.02], 0.025), "ours": run([50.0, 50.0], [0.03, 0.04], 0.045),
            "slow": run([400.0], [0.015], 0.015)}
    report = compare_runs(runs, {"baseline": ["--a=1"], "ours": ["--a=2"], "slow": ["--a=3"]})
    assert report["baseline_best_epoch_valid_ndcg@20"] == 0.02
    assert runs["ours"]["time_to_quality_speedup"] == 4.0 and runs["ours"]["epoch_speedup"] == 2.0
    assert runs["slow"]["time_to_quality_speedup"] is None
    table = markdown({"load": {"start": [0, 0, 0], "end": [0, 0, 0]}, "baseline": "abc",
                      "machine": {"device": "cpu", "cpu_count": 2, "torch": "x"}, "ml100k": report})
    assert "| ours | 50.0 | 2.00x | 0.0400 | 0.0450 | 50 | 4.00x | 0.0350 |" in table
    assert "| slow | 400.0 | 0.25x | 0.0150 | 0.0150 | not reached | - | 0.0050 |" in table


def test_reference_epoch_seconds_are_read_after_the_batch_schedule():
    stdout = "0 38\n11\n3\n(40,)\n0 40\n14.92\n7\nepoch:1, time: 0.0(s)\n"
    assert personalised_seconds(stdout) == 14.92
    with pytest.raises(ValueError):
        personalised_seconds("(40,)\n0 40\n")


def test_reference_layout_keeps_each_users_items_in_time_order(tmp_path):
    data = generate_mmdemo(tmp_path / NAME, n_users=12, n_items=40, max_len=8, seed=1)
    stats = write_reference_layout(data, tmp_path / "ref")
    out = tmp_path / "ref" / "dataset"
    pairs = [tuple(map(int, line.split())) for line in (out / f"{NAME}_final.txt").read_text().splitlines()]
    item_of = pickle.loads((out / f"{NAME}_item2id_final.pickle").read_bytes())
    titles = pickle.loads((out / f"{NAME}_texts_final.pickle").read_bytes())
    assert stats == {"users": 12, "items": 40, "interactions": len(pairs)}
    assert [u for u, _ in pairs] == sorted(u for u, _ in pairs)  # grouped by user
    # Each user's items, in the order of our (time-ordered) .inter file.
    ours: dict[str, list[str]] = {}
    for line in (data / f"{NAME}.inter").read_text().splitlines()[1:]:
        user, item, _ = line.split("\t")
        ours.setdefault(user, []).append(item)
    theirs: dict[int, list[str]] = {}
    for user, item in pairs:
        theirs.setdefault(user, []).append(item_of[item])
    assert sorted(map(tuple, ours.values())) == sorted(map(tuple, theirs.values()))
    first = item_of[1]
    assert (out / f"{NAME}_images" / f"{first}.jpg").read_bytes() == (data / "images" / f"{first}.jpg").read_bytes()
    assert titles[first].split()[0]  # a title per item


def test_launcher_changes_only_the_global_epoch_count(tmp_path):
    entry = tmp_path / "perpeft_lora_ia3.py"
    entry.write_text("import sys\ninter_epoch = 10\nprint(inter_epoch, sys.argv[1:], __name__)\n")
    result = subprocess.run([sys.executable, "-c", LAUNCHER, str(entry), "2", "--dataset", "x"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "2 ['--dataset', 'x'] __main__"
    assert "inter_epoch = 10" in entry.read_text()  # the file itself is untouched

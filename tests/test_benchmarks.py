"""Smoke runs of the benchmark scripts at toy size: they run and write sane tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


def test_encoder_backends_benchmark_quick(tmp_path):
    out = tmp_path / "bench"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "encoder_backends.py"), "--quick",
         "--backends", "lora", "iisan", "--out", str(out), "--workdir", str(tmp_path / "work")],
        check=True, capture_output=True, text=True, timeout=600,
    )
    payload = json.loads(out.with_suffix(".json").read_text())
    backends = {row["backend"]: row for row in payload["backends"]}
    assert set(backends) == {"lora", "iisan"}
    for row in backends.values():
        assert row["seconds_per_epoch"] > 0 and row["peak_memory_mb"] > 0
        assert 0 < row["peft_params"] < row["foundation_params"]
    content = payload["content_path"]
    assert content["cached_seconds_per_batch"] > 0 and content["speedup_batched_eval"] > 0
    assert "| lora |" in out.with_suffix(".md").read_text()


def test_perpeft_ablation_benchmark_quick(tmp_path):
    out, scratch = tmp_path / "ablation", tmp_path / "tmp"
    scratch.mkdir()
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "perpeft_ablation.py"), "--quick", "--groups", "1", "2",
         "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=600, env=dict(os.environ, TMPDIR=str(scratch)),
    )
    assert list(scratch.glob("bench-*")) == []  # its scratch folder (data, caches, runs) is gone
    payload = json.loads(out.with_suffix(".json").read_text())
    assert [run["n_groups"] for run in payload["runs"]] == [1, 2]
    assert payload["runs"][1]["personalised_epoch_seconds"] > 0
    assert "| 2 | lora | on |" in out.with_suffix(".md").read_text()


def test_mmdemo_oracle_features_are_one_hot_aspects(tmp_path):
    from benchmarks.mmdemo_oracle import ASPECT_COLUMNS, oracle_features

    aspects = tmp_path / "item_aspects.tsv"
    aspects.write_text("item_id\tdomain\tcategory\tcolour\tshape\tpattern\tbrand\tadjective\n"
                       "i1\tkitchen\tmug\tred\tcircle\tplain\tElko\tModern\n"
                       "i2\toffice\tlamp\tred\tsquare\tdots\tGalen\tModern\n")
    features = oracle_features(aspects, ["[PAD]", "i2", "i1", "unknown"])
    assert features.shape == (4, 2 + 2 + 1 + 2 + 2 + 2 + 1)
    assert features[0].sum() == 0 and features[3].sum() == 0  # padding, an id without aspects
    assert (features[1:3].sum(dim=1) == len(ASPECT_COLUMNS)).all()
    shared = (features[1] * features[2]).sum()  # i1 and i2 share their colour and adjective
    assert shared == 2


def test_mmdemo_oracle_benchmark_quick(tmp_path):
    out = tmp_path / "oracle"
    rows = ["ID only", "global, oracle encoder"]
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "mmdemo_oracle.py"), "--quick", "--variants", "mmdemo",
         "--rows", *rows, "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    runs = {run["row"]: run for run in json.loads(out.with_suffix(".json").read_text())["runs"]}
    assert set(runs) == set(rows)
    # the aspects name each user's liked pool: after 2 epochs the oracle ranks far above the IDs
    assert runs["global, oracle encoder"]["valid_ndcg@20"] > 2 * runs["ID only"]["valid_ndcg@20"] > 0
    assert "| global, oracle encoder | 1 |" in out.with_suffix(".md").read_text()


def test_accuracy_benchmark_quick(tmp_path):
    out, runs = tmp_path / "accuracy", tmp_path / "runs"
    rows = ["SASRec (PerPEFT's backbone)", "global, ID only", "global PEFT (iisan)", "PerPEFT (iisan)"]
    command = [sys.executable, str(REPO / "benchmarks" / "accuracy.py"), "--quick", "--rows", *rows,
               "--backends", "iisan", "--out", str(out), "--runs", str(runs)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    payload = json.loads(out.with_suffix(".json").read_text())
    assert [r["row"] for r in payload["runs"]] == rows
    for run in payload["runs"]:
        assert 0 <= run["record"]["test_result"]["ndcg@30"] <= 1 and "hit@10" in run["record"]["test_result"]
    backbone = payload["runs"][0]["record"]["flags"]
    assert "--hidden_size=32" in backbone and "--loss_type=CE" in backbone and "--MAX_ITEM_LIST_LENGTH=10" in backbone
    assert "--content_weight=0.0" in payload["runs"][1]["record"]["flags"]
    table = out.with_suffix(".md").read_text()
    assert "| PerPEFT (iisan) | 1 |" in table
    assert "| PerPEFT (iisan) | global PEFT (iisan) |" in table and "| global PEFT (iisan) | global, ID only |" in table
    # a second call finds every run done and repeats none
    again = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    assert again.stdout.count("done before") == 4


def test_efficiency_benchmark_quick(tmp_path):
    out = tmp_path / "efficiency"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "efficiency.py"), "--quick", "--backends", "iisan", "none",
         "--groups", "2", "--catalogue", "160", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=900,
    )
    payload = json.loads(out.with_suffix(".json").read_text())
    assert [(r["peft_type"], r["n_groups"]) for r in payload["rows"]] == [("iisan", 2), ("none", 2)]
    for row in payload["rows"]:
        assert row["global_epoch_s"] > 0 and row["personalised_epoch_s"] > 0 and row["ratio"] > 0
        assert row["memory_mb"] > 0 and row["eval_s"] > 0
    # min-max normalised over the two backends: the frozen model is cheapest in parameters
    assert set(payload["tpme"]) == {"iisan", "none"} and all(0 <= v <= 1 for v in payload["tpme"].values())
    assert [s["items"] for s in payload["catalogue_scaling"]] == [160]
    assert "| iisan | 2 |" in out.with_suffix(".md").read_text()


def test_recipe_ablation_quick(tmp_path):
    out = tmp_path / "recipe"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "recipe_ablation.py"), "--quick", "--out", str(out),
         "--runs", str(tmp_path / "runs")],
        check=True, capture_output=True, text=True, timeout=900,
    )
    payload = json.loads(out.with_suffix(".json").read_text())
    steps = [r["step"] for r in payload["results"]]
    assert steps[0] == "recipe: paper" and steps[-1].endswith("(default)") and len(steps) == 5
    assert "--recipe=paper" in payload["results"][0]["flags"]
    assert "--loss_type=sampled_softmax" in payload["results"][1]["flags"]
    for row in payload["results"]:
        assert 0 <= row["valid_ndcg@20"] <= 1 and row["epochs"] == 2
    assert "| mmdemo | + window training unit |" in out.with_suffix(".md").read_text()


def test_accuracy_rows_give_each_flag_once():
    """A row's own flag replaces the setting's (ml-100k's --n_groups=4 under a global-PEFT row),
    never reaching the CLI twice (which refuses a key given twice)."""
    sys.path.insert(0, str(REPO))
    from benchmarks.accuracy import SETTINGS, row_args, row_names

    for name, setting in SETTINGS.items():
        for row in row_names(setting.get("backends", ["lora", "iisan"])):
            flags = row_args(setting, row)
            if flags is None:
                continue
            keys = [flag.split("=", 1)[0] for flag in flags]
            assert len(keys) == len(set(keys)), (name, row, flags)
            if row.startswith("global"):
                assert "--n_groups=1" in flags, (name, row, flags)


@pytest.mark.parametrize("fails", [False, True])
def test_scratch_folders_are_removed_unless_the_benchmark_fails(tmp_path, fails):
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from benchmarks.common import scratch_folder\n"
        "folder = scratch_folder('bench-test-')\n"
        "(folder / 'run.log').write_text('x')\n"
        + ("raise RuntimeError('run failed')\n" if fails else "")
    )
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run([sys.executable, "-c", script, str(REPO)], capture_output=True, text=True,
                          env=dict(os.environ, TMPDIR=str(scratch)), timeout=120)
    left = list(scratch.iterdir())
    if fails:  # kept for a look at the logs, and said where
        assert done.returncode == 1 and len(left) == 1 and f"work files kept in {left[0]}" in done.stderr
    else:
        assert done.returncode == 0 and left == []


def test_schedule_savings_pairs_auto_runs_with_their_fixed_twins(tmp_path):
    from benchmarks.schedule_savings import pairs, table

    auto, fixed = tmp_path / "auto", tmp_path / "fixed"
    auto.mkdir()
    fixed.mkdir()

    def record(seconds, valid, test, schedule=None):
        value = {"train_epoch_seconds": seconds, "best_valid_score": valid, "test_result": {"ndcg@20": test}}
        if schedule is not None:
            value["schedule"] = schedule
        return json.dumps(value)

    (auto / "ds__PerPEFT_iisan__2020.json").write_text(
        record([2.0] * 6, 0.3, 0.2, {"grouped": [{"epoch": 3}]}))
    (fixed / "ds__PerPEFT_iisan__2020.json").write_text(record([2.0] * 10, 0.29, 0.21))
    (auto / "ds__SASRec_RecBole__2020.json").write_text(record([1.0], 0.1, 0.1))  # no schedule: not paired
    rows = pairs(auto, fixed)
    assert len(rows) == 1
    row = rows[0]
    assert (row["epochs_auto"], row["epochs_fixed"], row["grouped_at"]) == (6, 10, [3])
    assert (row["train_seconds_auto"], row["train_seconds_fixed"]) == (12.0, 20.0)
    assert "| ds | PerPEFT_iisan | 1 | 0.60 | 0.60 | 0.60 |" in table(rows)

    # With the ID-only check the content run's own seconds and epochs are compared, and the twin's
    # seconds are added in a column of their own (here the twin was served: its schedule is the record's).
    checked = json.loads(record([1.0] * 4, 0.31, 0.2, {"grouped": []}))
    checked["id_check"] = {"served": "id_only",
                           "content": {"train_seconds": 10.0, "epochs_run": 5, "schedule": {"grouped": [{"epoch": 2}]}},
                           "id_only": {"train_seconds": 4.0, "epochs_run": 4, "schedule": {"grouped": []}}}
    (auto / "ds__PerPEFT_iisan__2020.json").write_text(json.dumps(checked))
    row = pairs(auto, fixed)[0]
    assert (row["epochs_auto"], row["grouped_at"], row["train_seconds_auto"], row["train_seconds_id_check"]) == (
        5, [2], 10.0, 4.0)
    assert "| ds | PerPEFT_iisan | 1 | 0.50 | 0.50 | 0.70 |" in table([row])


def test_accuracy_counts_the_id_only_check():
    from benchmarks.accuracy import ids_served, train_seconds

    def checked(served):
        return {"train_epoch_seconds": [1.0], "id_check": {
            "served": served, "content": {"train_seconds": 30.0}, "id_only": {"train_seconds": 5.0}}}

    assert ids_served([checked("id_only"), checked("content"), {"train_epoch_seconds": [2.0]}]) == "1/2"
    assert ids_served([{"train_epoch_seconds": [2.0]}]) == "-"
    assert train_seconds(checked("id_only")) == 35.0 and train_seconds({"train_epoch_seconds": [2.0, 3.0]}) == 5.0

"""The CLI end to end: RecBole's own models, result files, safe checkpoints, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SMALL_SEQ, cli_args, run_cli

from recbole_perpeft.cli import main
from recbole_perpeft.quick_start import run_recbole_perpeft

RANDOM_HIT_AT_20 = 20 / 1682  # ml-100k has 1682 items


def test_sasrec_cli_writes_result_file_and_learns(tmp_path):
    result_file = tmp_path / "r.json"
    completed = run_cli(
        "--model=SASRec",
        "--dataset=ml-100k",
        "--epochs=2",
        f"--result_file={result_file}",
        *cli_args(SMALL_SEQ),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = json.loads(result_file.read_text())
    for key in (
        "model", "dataset", "dataset_stats", "best_valid_result", "test_result",
        "train_epoch_seconds", "eval_seconds", "peak_memory_mb", "params",
    ):
        assert key in record, key
    assert record["model"] == "SASRec" and record["dataset"] == "ml-100k"
    assert set(record["dataset_stats"]) == {"users", "items", "interactions"}
    stats = record["dataset_stats"]
    assert 0 < stats["items"] <= 1682 and stats["interactions"] >= 5 * stats["users"]  # 5-60 per user kept
    test = record["test_result"]
    assert {"ndcg@10", "ndcg@20", "ndcg@30", "hit@10", "hit@20", "hit@30"} <= set(test)
    assert all(math.isfinite(v) for v in test.values())
    assert len(record["train_epoch_seconds"]) == 2
    assert record["params"]["trainable"] == record["params"]["total"] > 0
    # Two epochs of SASRec already rank far better than chance.
    assert test["hit@20"] > 3 * RANDOM_HIT_AT_20


def test_checkpoint_is_weights_only_and_reproduces_test_metrics():
    record = run_recbole_perpeft("SASRec", "ml-100k", config_dict={**SMALL_SEQ, "epochs": 1})
    checkpoint = torch.load(record["checkpoint"], weights_only=True)
    assert {"state_dict", "optimizer", "epoch", "rng"} <= set(checkpoint)
    assert "config" not in checkpoint  # RecBole pickles its Config here; we must not

    from recbole_perpeft.run import build_config, build_run

    built = build_run(build_config("SASRec", "ml-100k", config_dict={**SMALL_SEQ, "epochs": 1}))
    reloaded = built.trainer.evaluate(built.test_data, load_best_model=True, model_file=record["checkpoint"])
    assert {k: float(v) for k, v in reloaded.items()} == record["test_result"]


@pytest.mark.parametrize("model", ["GRU4Rec", "BERT4Rec"])
def test_recbole_baselines_run_unchanged(model, tmp_path):
    result_file = tmp_path / f"{model}.json"
    exit_code = main(
        [f"--model={model}", "--dataset=ml-100k", "--epochs=1", f"--result_file={result_file}",
         "--embedding_size=16", *cli_args(SMALL_SEQ)]
    )
    assert exit_code == 0
    record = json.loads(result_file.read_text())
    assert all(math.isfinite(v) for v in record["test_result"].values())


def test_unknown_model_is_one_clear_line():
    completed = run_cli("--model=NoSuchModel", "--dataset=ml-100k")
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert "unknown model 'NoSuchModel'" in completed.stderr
    assert "SASRec" in completed.stderr and "ModuleNotFoundError" not in completed.stderr


def test_unknown_dataset_is_one_clear_line(capsys):
    assert main(["--model=SASRec", "--dataset=no_such_data", "--state=WARNING"]) == 2
    err = capsys.readouterr().err
    assert "dataset 'no_such_data' not found" in err and "ml-100k" in err and "mmdemo" in err


@pytest.mark.parametrize("argument", ["epochs=2", "--epochs", "--=3", "--1abc=2"])
def test_malformed_argument(argument, capsys):
    assert main(["--model=SASRec", "--dataset=ml-100k", argument]) == 2
    assert "malformed argument" in capsys.readouterr().err


def test_key_given_twice_with_different_values(capsys):
    assert main(["--model=SASRec", "--dataset=ml-100k", "--epochs=2", "--epochs=3"]) == 2
    assert "--epochs is given twice" in capsys.readouterr().err


def test_unusable_log_folder_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "log").write_text("a file where RecBole puts its log folder")
    assert main(["--model=SASRec", "--dataset=ml-100k", "--state=WARNING"]) == 2
    err = capsys.readouterr().err
    assert "cannot create the folder 'log/SASRec'" in err and "Traceback" not in err


def test_invalid_config_value_is_reported(capsys):
    assert main(["--model=SASRec", "--dataset=ml-100k", "--metrics=[NoSuchMetric]"]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_checkpoint_names_never_collide():
    from recbole_perpeft.checkpoint import unique_checkpoint_name

    names = {unique_checkpoint_name("SASRec") for _ in range(200)}
    assert len(names) == 200

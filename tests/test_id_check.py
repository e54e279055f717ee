"""``id_fallback``: a content run also trains its ID-only twin and serves the better on validation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_PERPEFT, cli_args, run_cli

from recbole_perpeft.id_check import check_line, choose, id_check_applies, id_only_config
from recbole_perpeft.run import build_config

SMALL = {**TINY_PERPEFT, "loss_type": "sampled_softmax", "num_negatives": 32, "peft_type": "iisan",
         "schedule": "fixed", "epochs": 3, "warmup_epochs": 1,
         # the twin's own training, sized for a test (the default: lr 1e-3, patience 20, 200 epochs)
         "id_fallback_config": {"learning_rate": 5e-3, "epochs": 4}}


def test_the_twin_is_the_id_only_row(small_data):
    config = build_config("PerPEFT", "mmsmall", config_dict={**SMALL, "data_path": small_data, "id_fallback": True,
                                                            "weight_decay": 0.01})
    assert id_check_applies(config)
    twin = id_only_config(config)
    assert (twin["n_groups"], twin["peft_type"], twin["content_weight"]) == (1, "none", 0.0)
    assert not twin["learn_content_weight"] and not id_check_applies(twin)
    # The twin trains as id_fallback_config says; everything else is the user's.
    assert (twin["learning_rate"], twin["epochs"]) == (5e-3, 4)
    assert (twin["weight_decay"], twin["seed"], twin["schedule"]) == (0.01, config["seed"], "fixed")


def test_the_default_twin_trains_longer_and_faster(small_data):
    config = build_config("PerPEFT", "mmsmall", config_dict={"data_path": small_data, "learning_rate": 2e-4})
    twin = id_only_config(config)
    assert (config["learning_rate"], config["patience"]) == (2e-4, 3)
    assert (twin["learning_rate"], twin["patience"], twin["schedule"], twin["epochs"]) == (1e-3, 20, "auto", 200)
    paper = build_config("PerPEFT", "mmsmall", config_dict={"recipe": "paper", "data_path": small_data})
    assert not id_check_applies(paper)  # the reference serves its content model


@pytest.mark.parametrize(("twin_settings", "message"), [
    ("{n_groups: 2}", "id_fallback_config may not set n_groups: the ID-only twin is defined by"),
    ("{learning_rate: -1}", "id_fallback_config: invalid configuration: learning_rate"),
    ("7", "invalid configuration: id_fallback_config must be a mapping"),
])
def test_a_bad_twin_setting_stops_the_run_before_it_trains(small_data, tmp_path, twin_settings, message):
    settings = {**SMALL, "id_fallback": True, "id_fallback_config": twin_settings}
    result_file = tmp_path / "run.json"
    run = run_cli("--model=PerPEFT", "--dataset=mmsmall", f"--data_path={small_data}",
                  f"--result_file={result_file}", f"--checkpoint_dir={tmp_path / 'saved'}", *cli_args(settings))
    assert run.returncode == 2 and message in run.stderr, run.stderr[-2000:]
    assert len(run.stderr.strip().splitlines()) == 1
    assert not result_file.exists() and not list((tmp_path / "saved").glob("*.pth"))


def test_choice_and_line():
    assert choose(0.20, 0.21) == "id_only" and choose(0.21, 0.20) == "content"
    assert choose(0.2, 0.2) == "content"  # a tie keeps the content model
    line = check_line("NDCG@20", 0.2, 0.25, "id_only")
    assert "0.2000" in line and "0.2500" in line and "IDs alone" in line


@pytest.mark.parametrize("content_weight", [0.1, 30.0])
def test_the_run_serves_the_better_on_validation(small_data, tmp_path, content_weight):
    """With content that helps (0.1) or drowns the IDs (30), the record's served model is the one
    with the better validation score, its checkpoint is the one tested, and the content run is
    exactly the run without the check."""
    settings = {**SMALL, "content_weight": content_weight, "id_fallback": True, "state": "INFO"}
    result_file = tmp_path / "run.json"
    run = run_cli("--model=PerPEFT", "--dataset=mmsmall", f"--data_path={small_data}",
                  f"--result_file={result_file}", *cli_args(settings))
    assert run.returncode == 0, run.stderr[-2000:]
    record = json.loads(result_file.read_text())
    check = record["id_check"]
    content, id_only = check["content"]["best_valid_score"], check["id_only"]["best_valid_score"]
    assert check["served"] == choose(content, id_only)
    assert check["id_only_settings"] == {"learning_rate": 5e-3, "epochs": 4, "n_groups": 1, "peft_type": "none",
                                         "content_weight": 0.0, "learn_content_weight": False, "id_fallback": False}
    assert record["best_valid_score"] == max(content, id_only)
    assert record["checkpoint"] == check[check["served"]]["checkpoint"]
    assert check["content"]["checkpoint"] != check["id_only"]["checkpoint"]
    assert "ID-only check: best validation" in run.stdout
    if content_weight == 30.0:
        assert check["served"] == "id_only" and record["groups"]["n_groups"] == 1
        assert "served: the ID-only backbone" in run.stdout
        served = torch.load(record["checkpoint"], map_location="cpu", weights_only=True)["run_config"]["settings"]
        assert served["content_weight"] == 0.0 and served["n_groups"] == 1
        # The served checkpoint is an ordinary one: it serves recommendations.
        from recbole_perpeft.recommend import Recommender

        recommender = Recommender.from_checkpoint(record["checkpoint"])
        assert len(recommender.recommend(["i0096", "i0111"], k=5).pairs()) == 5

    alone = tmp_path / "alone.json"
    run = run_cli("--model=PerPEFT", "--dataset=mmsmall", f"--data_path={small_data}",
                  f"--result_file={alone}", *cli_args({**settings, "id_fallback": False}))
    assert run.returncode == 0, run.stderr[-2000:]
    without = json.loads(alone.read_text())
    assert "id_check" not in without and without["best_valid_score"] == content
    if check["served"] == "content":
        assert without["test_result"] == record["test_result"]

"""Ray Tune searches end to end (real Ray, local, CPU): SASRec, PerPEFT, a failing trial, bad input."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import SMALL_SEQ, cli_args, run_cli

from recbole_perpeft.cli import main
from recbole_perpeft.data.mmdemo import generate_mmdemo
from recbole_perpeft.errors import ConfigError
from recbole_perpeft.tune import load_space, run_search

# One Ray search at a time: under pytest-xdist these tests share one test process.
pytestmark = pytest.mark.xdist_group("ray")


def _write(path, text):
    path.write_text(text)
    return str(path)


def _quiet(summary):
    return {k: v for k, v in summary.items() if k != "table"}


def test_sasrec_search_finishes_with_best_config_that_reruns(tmp_path, capsys):
    space = _write(tmp_path / "space.yaml", "learning_rate: {loguniform: [1e-3, 1e-2]}\nhidden_dropout_prob: {grid: [0.1, 0.3]}\n")
    out = tmp_path / "tune"
    code = main(["--model=SASRec", "--dataset=ml-100k", f"--tune={space}", "--epochs=2", f"--tune_dir={out}",
                 "--cpus_per_trial=1", *cli_args(SMALL_SEQ)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((out / "results.json").read_text())
    rows = summary["rows"]
    assert len(rows) == 2 and {r["hidden_dropout_prob"] for r in rows} == {0.1, 0.3}
    assert all(1e-3 <= r["learning_rate"] <= 1e-2 for r in rows)
    assert all(r["status"] in ("TERMINATED", "STOPPED") and 1 <= r["epochs_run"] <= 2 for r in rows)
    best = summary["best"]
    test = best["test"]
    assert set(test) >= {"ndcg@20", "hit@20"} and all(math.isfinite(v) for v in test.values())
    # Test metrics are computed for the best trial only.
    assert sum(1 for r in rows if r.get("test_ndcg@20") is not None) == 1
    assert "test_ndcg@20" in (out / "results.csv").read_text().splitlines()[0]
    assert "best trial" in printed and "valid_ndcg@20" in printed
    # best.yaml: searched keys + fixed overrides, plain YAML, and it reruns through the CLI.
    config = yaml.safe_load((out / "best.yaml").read_text())
    assert config["learning_rate"] == best["params"]["learning_rate"] and config["epochs"] == 2
    assert set(config) == {"learning_rate", "hidden_dropout_prob", "epochs", *SMALL_SEQ}
    result_file = tmp_path / "rerun.json"
    assert main(["--model=SASRec", "--dataset=ml-100k", f"--config_files={out / 'best.yaml'}",
                 f"--result_file={result_file}"]) == 0
    rerun = json.loads(result_file.read_text())
    best_row = next(r for r in rows if r["trial_id"] == best["trial_id"])
    # Same seed, same settings: the rerun reproduces the trial's validation and the driver's test.
    assert rerun["best_valid_result"]["ndcg@20"] == pytest.approx(best_row["valid_ndcg@20"], abs=1e-4)
    assert rerun["test_result"]["ndcg@20"] == pytest.approx(test["ndcg@20"], abs=1e-4)


def test_perpeft_search_on_small_mmdemo(tmp_path):
    generate_mmdemo(tmp_path / "data" / "mmtune", n_users=240, n_items=200, seed=3)
    space = _write(tmp_path / "space.yaml", "n_groups: {choice: [1, 2]}\nlearning_rate: {choice: [2e-3]}\n")
    fixed = {"foundation_model": "tiny-clip", "data_path": str(tmp_path / "data"), "train_batch_size": 64,
             "weight_decay": 0.0, "epochs": 2, "warmup_epochs": 1, "show_progress": False, "state": "WARNING"}
    summary = run_search("PerPEFT", "mmtune", space, fixed=fixed, num_samples=2, tune_dir=tmp_path / "tune",
                         log=lambda _: None)
    rows = summary["rows"]
    assert len(rows) == 2 and all(r["status"] != "ERROR" for r in rows), _quiet(summary)
    assert all(r["n_groups"] in (1, 2) for r in rows)
    assert math.isfinite(summary["best"]["test"]["ndcg@20"])
    best_yaml = summary["best"]["config_file"]
    assert main(["--model=PerPEFT", "--dataset=mmtune", f"--config_files={best_yaml}"]) == 0
    # The content cache was built once, by the driver, under $RECBOLE_PERPEFT_HOME.
    assert (tmp_path / "home" / "cache" / "content").is_dir()


def test_failing_trial_is_reported_and_search_goes_on(tmp_path):
    # 3 heads cannot split hidden_size=16: that grid point fails, the other one is the best.
    space = _write(tmp_path / "space.yaml", "n_heads: {grid: [2, 3]}\n")
    summary = run_search("SASRec", "ml-100k", space, fixed={**SMALL_SEQ, "epochs": 1}, tune_dir=tmp_path / "tune",
                         log=lambda _: None)
    by_heads = {r["n_heads"]: r for r in summary["rows"]}
    assert by_heads[3]["status"] == "ERROR" and "multiple of the number of attention heads" in by_heads[3]["error"]
    assert by_heads[2]["status"] == "TERMINATED" and not by_heads[2]["error"]
    assert summary["best"]["params"] == {"n_heads": 2}
    saved = json.loads((tmp_path / "tune" / "results.json").read_text())
    assert [r["status"] for r in sorted(saved["rows"], key=lambda r: r["n_heads"])] == ["TERMINATED", "ERROR"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: {normal: [0, 1]}", "unknown distribution 'normal'"),
        ("lr: {uniform: [1, 0]}", "lower bound 1 must be below"),
        ("lr: {loguniform: [0, 1]}", "bad .loguniform. for .lr."),
        ("lr: {choice: []}", "non-empty list"),
        ("lr: {uniform: 3}", "expects a list"),
        ("lr: [unclosed", "not valid YAML"),
        ("- 1\n- 2", "non-empty mapping"),
        ("lr: {choice: [1], grid: [2]}", "must map to one distribution"),
    ],
)
def test_bad_space_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_space(_write(tmp_path / "s.yaml", text))


def test_space_formats(tmp_path):
    space = load_space(_write(tmp_path / "s.yaml", (
        "a: {choice: [1, 2]}\nb: {grid_search: [x, y]}\nc: {uniform: {lower: 0.1, upper: 0.5}}\n"
        "d: {quniform: [0.1, 0.5, 0.1]}\ne: {randint: [1, 5]}\nf: {qloguniform: [1e-4, 1e-2, 1e-4]}\ng: 7\n"
        "h: {lograndint: [1, 64]}\n")))
    assert space["b"] == {"grid_search": ["x", "y"]} and space["g"] == 7
    assert set(space) == set("abcdefgh")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tune=missing.yaml"], "search space file not found"),
        (["--num_samples=2"], "need --tune"),
        (["--tune=SPACE", "--cpus_per_trial=0"], "bad resources"),
        (["--tune=SPACE", "--gpus_per_trial=1"], "GPUs"),
        (["--tune=SPACE", "--num_samples=two"], "--num_samples must be an integer"),
        (["--tune=SPACE", "--learning_rate=0.1"], "both searched"),
    ],
)
def test_bad_search_input_is_one_line(tmp_path, args, message):
    space = _write(tmp_path / "space.yaml", "learning_rate: {choice: [0.01]}\n")
    completed = run_cli("--model=SASRec", "--dataset=ml-100k", *[a.replace("SPACE", space) for a in args],
                        f"--tune_dir={tmp_path / 'tune'}", "--state=WARNING", timeout=300)
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr and message in completed.stderr, completed.stderr[-2000:]

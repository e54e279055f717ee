"""The run core: value checks before anything loads, nproc from config files, train_valid grouping,
exports in the ecosystem's formats, and the one cache primitive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SMALL_SEQ, TINY_PERPEFT, cli_args

from recbole_perpeft.cache import build_once
from recbole_perpeft.cli import main
from recbole_perpeft.config_rules import PEFT_TYPES
from recbole_perpeft.data.mmdemo import generate_mmdemo


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_mmdemo(root / "mmcore", n_users=300, n_items=200, seed=3)
    return root


# ------------------------------------------------------------------------------- value checks
# Runs the CLI script in a fresh interpreter and prints how long it took after its imports.
_TIMED_CLI = """
import runpy, sys, time
import recbole_perpeft.cli, recbole_perpeft.quick_start, recbole_perpeft.run
imported = time.perf_counter()
sys.argv = sys.argv[1:]  # as if the script had been run: its path, then its arguments
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print(time.perf_counter() - imported)
"""


def test_bad_peft_type_fails_in_one_line_before_any_data_or_model_loads(tmp_path):
    # mmdemo would be generated on first use and the model would import transformers: a bad
    # value must stop the CLI before either. Timed after the CLI's own imports, which on a busy
    # machine alone may take seconds.
    completed = subprocess.run(
        [sys.executable, "-c", _TIMED_CLI, str(REPO / "run_recbole_perpeft.py"), "--model=PerPEFT",
         "--dataset=mmdemo", f"--data_path={tmp_path / 'data'}", "--peft_type=nonsense"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "error: invalid configuration: peft_type must be one of lora, ia3, peft, iisan, none; got 'nonsense'"
    ]
    assert not (tmp_path / "data").exists() and not (tmp_path / "log").exists()
    assert float(completed.stdout.strip().splitlines()[-1]) < 2.0


@pytest.mark.parametrize("argument, key", [
    ("--loss_type=BPR", "loss_type"), ("--batch_mode=groups", "batch_mode"),
    ("--grouping_sequence=valid", "grouping_sequence"), ("--n_groups=0", "n_groups"),
    ("--train_unit=item", "train_unit"), ("--epochs=0", "epochs"), ("--train_batch_size=2.5", "train_batch_size"),
    ("--eval_batch_size=-1", "eval_batch_size"), ("--learning_rate=-0.1", "learning_rate"),
    ("--peft_config=5", "peft_config"), ("--nproc=0", "nproc"), ("--warmup_epochs=-1", "warmup_epochs"),
])
def test_bad_values_fail_in_one_line_before_any_data_loads(tmp_path, capsys, argument, key):
    assert main(["--model=PerPEFT", "--dataset=mmdemo", f"--data_path={tmp_path / 'data'}", argument]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: invalid configuration: {key} must be "), err
    assert not (tmp_path / "data").exists()


def test_bad_value_in_a_config_file_is_caught_too(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("batch_mode: sometimes\n")
    assert main(["--model=PerPEFT", "--dataset=mmdemo", f"--data_path={tmp_path / 'data'}",
                 f"--config_files={tmp_path / 'bad.yaml'}"]) == 2
    assert "batch_mode must be one of group, mixed; got 'sometimes'" in capsys.readouterr().err


def test_perpeft_rules_leave_other_models_alone(capsys):
    # loss_type means something else to SASRec; RecBole judges it there.
    assert main(["--model=SASRec", "--dataset=ml-100k", "--epochs=0"]) == 2
    assert "epochs must be an integer >= 1" in capsys.readouterr().err
    from recbole_perpeft.run import build_config

    config = build_config("SASRec", "ml-100k", config_dict={"n_groups": "any", "state": "ERROR"})
    assert config["n_groups"] == "any"


def test_the_rules_know_every_peft_backend():
    from recbole_perpeft.peft_backends import PEFT_TYPES as BACKENDS

    assert PEFT_TYPES == BACKENDS


# ----------------------------------------------------------------------------------- launcher
def test_nproc_from_a_config_file_trains_in_two_processes(small_data, tmp_path):
    (tmp_path / "ddp.yaml").write_text("nproc: 2\n")
    result_file = tmp_path / "r.json"
    assert main(["--model=SASRec", "--dataset=mmcore", f"--data_path={small_data}", "--epochs=1",
                 f"--config_files={tmp_path / 'ddp.yaml'}", f"--result_file={result_file}", *cli_args(SMALL_SEQ)]) == 0
    assert json.loads(result_file.read_text())["world_size"] == 2


# ---------------------------------------------------------------------------- train_valid grouping
def test_train_valid_sequences_are_the_test_inputs(small_data):
    from recbole.data import data_preparation

    from recbole_perpeft.run import build_config, create_dataset
    from recbole_perpeft.trainer.perpeft_trainer import append_item

    config = build_config("PerPEFT", "mmcore", config_dict={**TINY_PERPEFT, "data_path": str(small_data)})
    _, valid_data, test_data = data_preparation(config, create_dataset(config))
    valid, test = valid_data._dataset.inter_feat, test_data._dataset.inter_feat
    assert torch.equal(valid["user_id"], test["user_id"])
    seq, length = append_item(valid["item_id_list"], valid["item_length"], valid["item_id"])
    assert torch.equal(length, test["item_length"]) and torch.equal(seq, test["item_id_list"])
    assert (valid["item_length"] == seq.size(1)).any()  # full rows drop their oldest item


def test_grouping_on_train_valid_sequences_runs_end_to_end(small_data, tmp_path):
    result_file = tmp_path / "r.json"
    settings = {**TINY_PERPEFT, "epochs": 2, "n_groups": 2, "data_path": str(small_data)}
    assert main(["--model=PerPEFT", "--dataset=mmcore", "--grouping_sequence=train_valid",
                 f"--result_file={result_file}", *cli_args(settings)]) == 0
    record = json.loads(result_file.read_text())
    assert record["grouping_log"][0]["event"] == "grouped" and record["groups"]["personalised"]


# --------------------------------------------------------------------------------------- export
def test_exported_adapter_loads_with_peft_and_gives_the_groups_item_embeddings(small_data, tmp_path, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file

    from recbole_perpeft.encoders import build_foundation_encoder
    from recbole_perpeft.model.group_modules import Projector
    from recbole_perpeft.recommend import Recommender

    export = tmp_path / "export"
    settings = {**TINY_PERPEFT, "epochs": 2, "n_groups": 2, "peft_type": "lora", "data_path": str(small_data)}
    result_file = tmp_path / "r.json"
    assert main(["--model=PerPEFT", "--dataset=mmcore", f"--export={export}", f"--result_file={result_file}",
                 *cli_args(settings)]) == 0
    manifest = json.loads((export / "export.json").read_text())
    assert len(manifest["groups"]) == 2 and manifest["personalised"]
    group = 1
    entry = manifest["groups"][group]
    folder = export / f"group_{group}"
    assert {"adapter_config.json", "adapter_model.safetensors", "projector.safetensors"} <= {
        p.name for p in folder.iterdir()}

    trained = Recommender.from_checkpoint(json.loads(result_file.read_text())["checkpoint"]).model
    items = trained.items
    n_items = items.encoder.n_items
    # The foundation model as anyone would load it, with the exported adapter on top (peft's own loader).
    foundation = build_foundation_encoder(manifest["run_config"]["foundation_model"],
                                          seed=manifest["run_config"]["seed"])
    PeftModel.from_pretrained(foundation.model, str(folder))
    foundation.eval()
    with torch.no_grad():
        features = foundation.encode(items.encoder.store.gather(torch.arange(n_items)))
        assert torch.allclose(features, items.encoder.encode_all(group), atol=1e-6, rtol=0)
        assert not torch.allclose(features, items.encoder.encode_all(0), atol=1e-3, rtol=0)  # groups differ
        projector = Projector(features.shape[1], trained.hidden_size)  # the paper's MLP, output weight 1
        projector.load_state_dict(load_file(folder / "projector.safetensors"))
        ids = load_file(export / entry["backbone"])["item_embedding.weight"]
        table = ids + entry["content_weight"] * projector(features)
        assert torch.allclose(table, trained.group_table(group), atol=1e-6, rtol=0)

    users = (export / "user_groups.tsv").read_text().splitlines()
    assert users[0] == "user_id\tgroup" and len(users) - 1 == json.loads(result_file.read_text())[
        "dataset_stats"]["users"]
    assert {line.split("\t")[1] for line in users[1:]} == {"0", "1"}
    centroids = [line.split("\t") for line in (export / "centroids.tsv").read_text().splitlines()]
    assert torch.equal(torch.tensor([[float(x) for x in row] for row in centroids]), trained.centroids[:2].cpu())

    # Nothing is overwritten: the same folder again is refused before any training.
    capsys.readouterr()
    checkpoints = sorted(Path("saved").iterdir())
    before = sorted(p.relative_to(export) for p in export.rglob("*"))
    assert main(["--model=PerPEFT", "--dataset=mmcore", f"--export={export}", *cli_args(settings)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(Path("saved").iterdir()) == checkpoints
    assert sorted(p.relative_to(export) for p in export.rglob("*")) == before


def test_other_models_export_their_weights_as_safetensors(tmp_path):
    from safetensors.torch import load_file

    export = tmp_path / "sasrec"
    result_file = tmp_path / "r.json"
    assert main(["--model=SASRec", "--dataset=ml-100k", "--epochs=1", f"--export={export}",
                 f"--result_file={result_file}", *cli_args(SMALL_SEQ)]) == 0
    weights = load_file(export / "model.safetensors")
    checkpoint = torch.load(json.loads(result_file.read_text())["checkpoint"], weights_only=True)
    assert weights.keys() == checkpoint["state_dict"].keys()
    assert all(torch.equal(weights[k], checkpoint["state_dict"][k]) for k in weights)


# ---------------------------------------------------------------------------------------- cache
def test_build_once_builds_reuses_and_rebuilds_damage(tmp_path):
    target = tmp_path / "cache" / "thing"
    builds = []

    def build(folder: Path) -> None:
        builds.append(folder)
        (folder / "data.txt").write_text("complete")

    def problem_with(folder: Path) -> str | None:
        data = folder / "data.txt"
        return None if data.is_file() and data.read_text() == "complete" else "data.txt incomplete"

    assert build_once(target, problem_with, build) is True
    assert build_once(target, problem_with, build) is False and len(builds) == 1
    (target / "data.txt").write_text("compl")
    with pytest.warns(UserWarning, match="damaged .data.txt incomplete"):
        assert build_once(target, problem_with, build) is True
    assert (target / "data.txt").read_text() == "complete"
    assert sorted(p.name for p in target.parent.iterdir()) == [".thing.lock", "thing"]  # no temp, no trash


def test_a_failed_build_publishes_nothing(tmp_path):
    target = tmp_path / "thing"

    def build(folder: Path) -> None:
        (folder / "half.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        build_once(target, lambda folder: None, build)
    assert not target.exists() and [p.name for p in tmp_path.iterdir()] == [".thing.lock"]

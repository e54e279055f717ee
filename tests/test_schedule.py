"""``schedule: auto``: grouping at the best global state, groups that stop and stay stopped, a run
that ends by itself; ``schedule: fixed`` and ``recipe: paper`` as before."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_PERPEFT, cli_args, run_cli

from recbole_perpeft.trainer.schedule import AutoSchedule

SMALL = {**TINY_PERPEFT, "loss_type": "sampled_softmax", "num_negatives": 32}
# A learning rate that overfits mmsmall within a few epochs, so every stage stops early.
EAGER = {**SMALL, "learning_rate": 1e-2, "patience": 1, "epochs": 14, "warmup_epochs": 14, "peft_type": "iisan"}

# Test metrics of these runs at 380cb61, before ``schedule: auto`` existed (the same on this
# machine and CI's): ``schedule: fixed`` and ``recipe: paper`` must reproduce them exactly.
BEFORE_AUTO = {
    "fixed_lora": {"ndcg@10": 0.1555, "ndcg@20": 0.2019, "ndcg@30": 0.2259, "hit@10": 0.2933, "hit@20": 0.48,
                   "hit@30": 0.5933},
    "paper": {"ndcg@10": 0.05, "ndcg@20": 0.0699, "ndcg@30": 0.0791, "hit@10": 0.1067, "hit@20": 0.1867,
              "hit@30": 0.23},
}


def test_patience_bookkeeping():
    schedule = AutoSchedule(patience=2)
    for epoch, score in enumerate([0.1, 0.2, 0.19, 0.2]):
        schedule.observe_global(epoch, score)
    assert schedule.global_exhausted and schedule.global_stage.best_epoch == 1
    schedule.start_groups(4, {0: 0.5, 1: 0.3})
    assert schedule.observe_groups(4, {0: 0.4, 1: 0.35}) == []
    assert schedule.observe_groups(5, {0: 0.45, 1: 0.36}) == [0]
    assert not schedule.finished and schedule.is_stopped(0)
    assert schedule.observe_groups(6, {0: 0.9, 1: 0.2}) == []  # a stopped group is not judged again
    assert schedule.observe_groups(7, {0: 0.9, 1: 0.2}) == [1] and schedule.finished_at == 7
    restored = AutoSchedule(patience=2)
    restored.load_state(json.loads(json.dumps(schedule.state())))
    assert restored.state() == schedule.state()


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory, small_data):
    """One auto run on mmsmall, watched: the backbone at every global validation and at
    grouping, and every group's modules at every validation after grouping."""
    from recbole.data import data_preparation

    from recbole_perpeft.run import build_config, build_model, create_dataset
    from recbole_perpeft.trainer import PerPEFTTrainer

    config = build_config("PerPEFT", "mmsmall", config_dict={
        **EAGER, "data_path": small_data, "checkpoint_dir": str(tmp_path_factory.mktemp("saved"))})
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    model = build_model(config, train_data._dataset)  # seeded: the same run in any test process
    trainer = PerPEFTTrainer(config, model)
    seen = {"global": {}, "grouped": None, "modules": {}}
    valid_epoch, cluster = trainer._valid_epoch, trainer._cluster

    def watched_valid_epoch(data, show_progress=False):
        result = valid_epoch(data, show_progress=show_progress)
        epoch = trainer._current_epoch
        if bool(model.personalised):
            seen["modules"][epoch] = {
                g: [p.detach().clone() for p in model.items.group_parameters(g)] for g in range(model.n_groups)
            }
        else:
            seen["global"][epoch] = model.trm_encoder.state_dict()["layer.0.multi_head_attention.query.weight"].clone()
        return result

    def watched_cluster():
        seen["grouped"] = model.trm_encoder.state_dict()["layer.0.multi_head_attention.query.weight"].clone()
        return cluster()

    trainer._valid_epoch, trainer._cluster = watched_valid_epoch, watched_cluster
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    return trainer, seen, train_data


def test_users_are_grouped_from_the_best_global_state(eager_run):
    trainer, seen, _ = eager_run
    scores = dict(trainer.valid_scores)
    grouped = [e for e in trainer.grouping_log if e["event"] == "grouped"]
    assert len(grouped) == 1 and "had not improved for 1 epochs" in grouped[0]["reason"]
    global_epochs = sorted(seen["global"])
    assert global_epochs[-1] == grouped[0]["epoch"] - 1  # the stage ended before the cap
    best = max(global_epochs, key=lambda e: (scores[e], -e))
    assert best != global_epochs[-1]  # the last global epoch was no gain ...
    assert torch.equal(seen["grouped"], seen["global"][best])  # ... and users were grouped from the best
    assert not torch.equal(seen["grouped"], seen["global"][global_epochs[-1]])


def test_every_group_stops_and_the_run_ends_before_the_cap(eager_run):
    trainer, seen, _ = eager_run
    schedule = trainer.schedule_report()
    stops = {e["group"]: e["epoch"] for e in schedule["stops"]}
    assert stops and set(stops) == set(range(int(trainer.model.groups_formed)))
    assert schedule["epochs_run"] == max(stops.values()) + 1 < trainer.epochs  # ended by itself, before the cap
    for group, stopped_at in stops.items():  # whatever trained later left a stopped group as it was
        for epoch in (e for e in seen["modules"] if e > stopped_at):
            for before, after in zip(seen["modules"][stopped_at][group], seen["modules"][epoch][group], strict=True):
                assert torch.equal(before, after), f"group {group} changed after it stopped at epoch {stopped_at}"
    assert schedule["train_seconds"] > 0 and schedule["cap_estimated_train_seconds"] > schedule["train_seconds"]
    # a stopped group is served with a state from before it stopped
    for group, report in trainer.selection_report()["groups"].items():
        assert report["epoch_kept"] <= stops[int(group)]


def test_a_stopped_groups_batches_are_skipped_and_its_modules_stay(eager_run):
    trainer, _, train_data = eager_run
    model = trainer.model
    epoch = len(trainer.train_epoch_seconds)
    trainer.auto.stopped = {0: epoch - 1}  # only group 0 has stopped
    users = train_data._dataset.inter_feat[train_data._dataset.uid_field]
    trained_rows = torch.cat(trainer._batches(train_data, epoch))
    groups_of_rows = model.group_of_user.cpu()[users[trained_rows]]
    assert len(trained_rows) and not (groups_of_rows == 0).any()
    assert set(groups_of_rows.tolist()) == set(range(1, int(model.groups_formed)))
    before = {g: [p.detach().clone() for p in model.items.group_parameters(g)] for g in range(model.n_groups)}
    trainer._train_epoch(train_data, epoch)
    after = {g: list(model.items.group_parameters(g)) for g in range(model.n_groups)}
    assert all(torch.equal(b, a) for b, a in zip(before[0], after[0], strict=True))
    for group in range(1, int(model.groups_formed)):
        assert not all(torch.equal(b, a) for b, a in zip(before[group], after[group], strict=True))


def test_a_run_without_settings_ends_by_itself_and_says_when(small_data, tmp_path):
    result_file = tmp_path / "run.json"
    settings = {**EAGER, "state": "INFO", "peft_type": "iisan"}
    settings.pop("epochs")
    settings.pop("warmup_epochs")  # the defaults' cap (30 epochs, at most 10 global)
    run = run_cli("--model=PerPEFT", "--dataset=mmsmall", f"--data_path={small_data}",
                  f"--result_file={result_file}", *cli_args(settings))
    assert run.returncode == 0, run.stderr
    record = json.loads(result_file.read_text())
    schedule = record["schedule"]
    assert schedule["mode"] == "auto" and schedule["epochs_run"] < 30
    grouped_lines = [line for line in run.stdout.splitlines() if "users grouped into" in line]
    assert len(grouped_lines) == 1 and "grouped from the best global epoch" in grouped_lines[0]
    stop_lines = [line for line in run.stdout.splitlines() if "stopped: its validation score" in line]
    assert len(stop_lines) == record["groups"]["formed"] == len(schedule["stops"])
    assert "every group has stopped: training ends" in run.stdout


def test_global_model_stops_at_its_patience(small_data):
    from recbole_perpeft.quick_start import run_recbole_perpeft

    record = run_recbole_perpeft("PerPEFT", "mmsmall", config_dict={**EAGER, "data_path": small_data, "n_groups": 1})
    schedule = record["schedule"]
    scores = dict(record["valid_scores"])
    assert schedule["epochs_run"] < 14 and [e["group"] for e in schedule["stops"]] == [0]
    best_epoch = schedule["stops"][0]["best_epoch"]
    assert schedule["epochs_run"] == best_epoch + 2  # one epoch of patience after the best
    assert record["best_valid_score"] == max(scores.values()) == scores[best_epoch]


@pytest.mark.parametrize("name", sorted(BEFORE_AUTO))
def test_fixed_schedule_and_paper_recipe_are_unchanged(small_data, name):
    from recbole_perpeft.quick_start import run_recbole_perpeft

    if name == "paper":
        settings = {**TINY_PERPEFT, "recipe": "paper", "epochs": 3, "warmup_epochs": 2, "train_batch_size": 64,
                    "learning_rate": 2e-3}
    else:
        # train_unit: window was the default then (auto now picks by the data)
        settings = {**SMALL, "epochs": 4, "warmup_epochs": 2, "peft_type": "lora", "schedule": "fixed",
                    "train_unit": "window"}
    record = run_recbole_perpeft("PerPEFT", "mmsmall", config_dict={**settings, "data_path": small_data})
    assert record["schedule"]["mode"] == "fixed"
    assert record["test_result"] == BEFORE_AUTO[name]

"""The training recipe: sampled softmax over shared negatives, the window training unit, model
selection by stage and per group, grouping quality, and ``recipe: paper``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_PERPEFT

from recbole_perpeft.quick_start import run_recbole_perpeft
from recbole_perpeft.run import build_config

SMALL = {**TINY_PERPEFT, "loss_type": "sampled_softmax", "num_negatives": 32}


def _config(data_path, **overrides):
    return build_config("PerPEFT", "mmsmall", config_dict={**SMALL, "data_path": data_path, **overrides})


def _model_and_data(data_path, **overrides):
    from recbole.data import data_preparation

    from recbole_perpeft.model import PerPEFT
    from recbole_perpeft.run import create_dataset

    config = _config(data_path, **overrides)
    train_data, valid_data, test_data = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    return PerPEFT(config, train_data._dataset), train_data


def test_sampled_softmax_encodes_each_distinct_item_once_per_step_and_learns(small_data):
    model, train_data = _model_and_data(small_data, peft_type="lora")
    encoder = model.items.encoder
    seen: list[torch.Tensor] = []
    original = encoder.encode

    def counting_encode(item_ids, group):
        seen.append(item_ids.detach().flatten().clone())
        return original(item_ids, group)

    encoder.encode = counting_encode
    batch = train_data._dataset[torch.arange(64)]
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(10):
        seen.clear()
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        encoded = torch.cat(seen)
        assert len(encoded) == len(torch.unique(encoded))  # no item through the encoder twice
        batch_items = torch.unique(torch.cat([batch[model.ITEM_SEQ].flatten(), batch[model.POS_ITEM_ID]]))
        assert set(batch_items.tolist()) <= set(encoded.tolist())
        # the batch's own items plus at most num_negatives shared ones
        assert len(encoded) <= len(batch_items) + SMALL["num_negatives"]
    assert sum(losses[-3:]) < sum(losses[:3])


def test_group_negatives_come_from_the_groups_pool(small_data):
    model, _ = _model_and_data(small_data)
    group_of_user = torch.arange(model.n_users) % 2
    model.negatives.set_groups(group_of_user, 2)
    for group in (0, 1):
        pool = set(model.negatives.pools[group, : int(model.negatives.pool_sizes[group])].tolist())
        drawn = model.negatives.shared(500, group, generator=torch.Generator().manual_seed(group))
        assert set(drawn.tolist()) <= pool
    everywhere = model.negatives.shared(2000, None, generator=torch.Generator().manual_seed(3))
    assert 0 not in everywhere.tolist() and int(everywhere.max()) < model.n_items


def test_window_unit_makes_every_training_interaction_a_target_once(small_data):
    model, train_data = _model_and_data(small_data, train_unit="window", MAX_ITEM_LIST_LENGTH=4)
    dataset = train_data._dataset
    rows = dataset[torch.arange(len(dataset))]
    _, targets = model._positions(rows)
    users = rows[model.USER_ID].unsqueeze(1).expand_as(targets)
    trained = list(zip(users[targets != 0].tolist(), targets[targets != 0].tolist()))
    history = dataset.history  # the training items of every user (mmdemo users never repeat one)
    known = {(u, i) for u in set(users[:, 0].tolist()) for i in history.of_user(u).tolist()}
    assert len(trained) == len(set(trained)) and set(trained) <= known
    # every training interaction but each user's first, which no item precedes
    assert len(trained) == len(known) - len(set(users[:, 0].tolist()))
    assert len(dataset) < len(known) / 2  # windows of 4 targets: far fewer rows than prefixes


def test_window_cut_share_counts_the_targets_windows_shorten():
    from recbole_perpeft.data.sequential import window_cut_share

    # 12 training items, windows of 10: targets 1..11; the last window (targets 2..11, inputs from
    # item 1) shows targets 2..10 fewer items than a prefix does: 9 of 11.
    assert window_cut_share(np.array([12]), 10) == pytest.approx(9 / 11)
    assert window_cut_share(np.array([10, 11, 3]), 10) == 0.0  # one window holds the whole history
    assert window_cut_share(np.array([1, 0]), 10) == 0.0  # no target at all


@pytest.mark.parametrize("window, unit", [(3, "prefix"), (40, "window")])
def test_auto_train_unit_follows_the_histories(small_data, window, unit):
    """mmsmall's users hold 5-60 items: windows of 3 shorten most targets' history (prefix, with
    batches of as many targets as 64 windows), windows of 40 few (window)."""
    model, train_data = _model_and_data(small_data, train_unit="auto", MAX_ITEM_LIST_LENGTH=window,
                                        train_batch_size=64)
    choice = train_data._dataset.train_unit_choice
    assert choice["train_unit"] == unit == model.train_unit
    assert (choice["targets_shortened_by_windows"] > 0.5) == (unit == "prefix")
    assert train_data.batch_size == choice["train_batch_size"] == (64 * window if unit == "prefix" else 64)
    rows = train_data._dataset
    history = rows.history
    targets = sum(len(history.of_user(u)) - 1 for u in set(rows.inter_feat[model.USER_ID].tolist()))
    assert (len(rows) == targets) == (unit == "prefix")  # a prefix row per target


def test_stage_selection_tests_a_personalised_epoch(small_data):
    record = run_recbole_perpeft("PerPEFT", "mmsmall", config_dict={
        **SMALL, "data_path": small_data, "epochs": 4, "warmup_epochs": 2, "model_selection": "stage"})
    selection = record["model_selection"]
    assert selection["mode"] == "stage"
    assert selection["best_global"]["epoch"] < 2 <= selection["best_personalised"]["epoch"]
    assert record["best_valid_result"] == selection["best_personalised"]["result"]
    checkpoint = torch.load(record["checkpoint"], weights_only=True)
    assert checkpoint["epoch"] == selection["best_personalised"]["epoch"]


def test_group_selection_serves_each_group_its_best_epoch(small_data):
    record = run_recbole_perpeft("PerPEFT", "mmsmall", config_dict={
        **SMALL, "data_path": small_data, "epochs": 4, "warmup_epochs": 2, "model_selection": "group",
        "learning_rate": 5e-3})
    selection = record["model_selection"]
    groups = selection["groups"]
    assert set(groups) == {str(g) for g in range(record["groups"]["formed"])}
    for report in groups.values():
        best = max(report["best_global_valid"], report["best_personalised_valid"] or -1)
        assert report["stage_kept"] == ("global" if report["epoch_kept"] < 2 else "personalised")
        kept_global = report["stage_kept"] == "global"
        assert (best == report["best_global_valid"]) == kept_global or \
            report["best_personalised_valid"] == report["best_global_valid"]
    # each group's users, scored by the served model, get exactly the kept epoch's score ...
    for group, result in record["best_group_valid_results"].items():
        assert isinstance(result, dict) and group in groups
    # ... so the served model is at least as good on validation as the best global epoch
    assert selection["served"]["score"] >= selection["best_global"]["score"] - 1e-9
    assert record["best_valid_score"] == selection["served"]["score"]
    # and it is what the checkpoint holds: re-evaluating the checkpoint gives the test result
    from recbole.data import data_preparation

    from recbole_perpeft.model import PerPEFT
    from recbole_perpeft.run import create_dataset
    from recbole_perpeft.trainer import PerPEFTTrainer

    config = _config(small_data, epochs=4, warmup_epochs=2, model_selection="group", learning_rate=5e-3)
    _, _, test_data = data_preparation(config, create_dataset(config))
    model = PerPEFT(config, test_data._dataset)
    reloaded = PerPEFTTrainer(config, model).evaluate(test_data, load_best_model=True,
                                                      model_file=record["checkpoint"])
    assert bool(model.serving_per_group)
    assert {k: float(v) for k, v in reloaded.items()} == record["test_result"]


def test_served_groups_reproduce_their_kept_validation_scores(small_data):
    from recbole.data import data_preparation

    from recbole_perpeft.model import PerPEFT
    from recbole_perpeft.run import create_dataset
    from recbole_perpeft.trainer import PerPEFTTrainer

    config = _config(small_data, epochs=4, warmup_epochs=2, model_selection="group", learning_rate=5e-3)
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = PerPEFT(config, train_data._dataset)
    trainer = PerPEFTTrainer(config, model)
    trainer.fit(train_data, valid_data, saved=False)
    kept = trainer.selection.best_score
    trainer.evaluate(valid_data, load_best_model=False)
    users = valid_data._dataset.inter_feat[valid_data._dataset.uid_field]
    row_groups = model.group_of_user[users]
    for group, score in kept.items():
        served = float(trainer.evaluator.row_scores[row_groups == group].mean())
        assert served == pytest.approx(score, abs=1e-9), group


def test_grouping_quality_against_known_segments(small_data):
    from recbole_perpeft.model.grouping import grouping_quality

    perfect = grouping_quality(torch.tensor([0, 0, 1, 1, 2]), ["a", "a", "b", "b", "c"])
    assert perfect["purity"] == 1.0 and perfect["nmi"] == pytest.approx(1.0)
    mixed = grouping_quality(torch.tensor([0, 0, 0, 0]), ["a", "b", "a", "b"])
    assert mixed["purity"] == 0.5 and mixed["nmi"] == pytest.approx(0.0)
    record = run_recbole_perpeft("PerPEFT", "mmsmall", config_dict={
        **SMALL, "data_path": small_data, "epochs": 2, "warmup_epochs": 1, "peft_type": "none",
        "grouping_truth": "groups.tsv"})
    entry = record["grouping_log"][0]
    assert 0.25 <= entry["purity"] <= 1.0 and 0.0 <= entry["nmi"] <= 1.0 and entry["users"] == 300


def test_recipe_paper_is_the_reference_training(small_data):
    config = build_config("PerPEFT", "mmsmall", config_dict={"data_path": small_data, "recipe": "paper"})
    assert (config["loss_type"], config["learning_rate"], config["train_batch_size"]) == ("BCE", 1e-4, 16)
    assert (config["content_weight"], config["epochs"], config["warmup_epochs"]) == (0.5, 30, 10)
    assert config["model_selection"] == "stage" and config["train_unit"] == "user"
    record = run_recbole_perpeft("PerPEFT", "mmsmall", config_dict={
        **TINY_PERPEFT, "data_path": small_data, "recipe": "paper", "epochs": 3, "warmup_epochs": 2,
        "train_batch_size": 64, "learning_rate": 2e-3})
    assert record["train_loss"][1] < record["train_loss"][0]  # global stage, BCE with one negative
    assert record["model_selection"]["best_personalised"]["epoch"] == 2


def test_unknown_recipe_is_one_line(small_data):
    from conftest import run_cli

    result = run_cli("--model=PerPEFT", "--dataset=mmsmall", f"--data_path={small_data}", "--recipe=fast")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "known recipes: default, paper" in result.stderr

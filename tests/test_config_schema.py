"""One config schema: every plugin key documented once, the key reference generated from it, the
sets derived from it unchanged, and combinations of keys refused when the config is built."""

from __future__ import annotations

import pytest
from conftest import REPO

from recbole_perpeft import config_schema as schema
from recbole_perpeft.config_doc import DOC_PATH, REGENERATE, plugin_property_files, plugin_yaml_keys, render_markdown
from recbole_perpeft.config_rules import RULES, check_combinations, is_topk_metric
from recbole_perpeft.errors import ConfigError

# The sets as they were before the schema: a change here changes every run's identity (resume
# files and checkpoints of earlier runs would no longer match) or tune's dataset sharing.
NOT_SHAPING_BEFORE = frozenset({
    "epochs", "stopping_step", "checkpoint_dir", "data_path", "cache_dir", "show_progress", "state", "plots",
    "eval_batch_size", "encode_batch_size", "gpu_id", "use_gpu", "device", "worker", "nproc", "world_size",
    "ip", "port", "offset", "local_rank", "log_wandb", "wandb_project", "save_dataset", "dataset_save_path",
    "save_dataloaders", "dataloaders_save_path", "metrics", "topk", "metric_decimal_place", "enable_amp",
    "grouping_truth",
})
DATASET_KEYS_BEFORE = frozenset({"dataset", "data_path", "eval_args", "seed", "TITLE_FIELD", "IMAGE_FIELD", "image_dir"})


def test_every_key_of_a_plugin_property_file_is_in_the_schema():
    undocumented = plugin_yaml_keys(plugin_property_files()) - set(schema.KEYS)
    assert not undocumented, f"add a Key to recbole_perpeft/config_schema.py for: {sorted(undocumented)}"


def test_every_plugin_key_of_the_schema_has_its_default_in_a_property_file():
    in_files = plugin_yaml_keys(plugin_property_files())
    without_default = [key.name for key in schema.SCHEMA if not key.recbole and key.name not in in_files]
    assert not without_default, f"give these keys a default in properties/: {without_default}"


def test_the_schema_names_each_key_once():
    names = [key.name for key in schema.SCHEMA]
    assert len(names) == len(set(names))
    assert all(key.doc.strip() and "\n" not in key.doc for key in schema.SCHEMA)


def test_docs_config_md_is_the_generated_key_reference():
    committed = (REPO / DOC_PATH).read_text(encoding="utf-8")
    assert committed == render_markdown(), f"{DOC_PATH} is stale: regenerate it with `{REGENERATE}`"


def test_the_derived_sets_are_those_of_before():
    # the rules: those of before, plus the keys added since (item_encoder, schedule, patience, id_fallback,
    # id_fallback_config)
    from recbole_perpeft.run_identity import NOT_SHAPING
    from recbole_perpeft.tune import _DATASET_KEYS_EXTRA

    assert NOT_SHAPING == NOT_SHAPING_BEFORE
    assert _DATASET_KEYS_EXTRA == DATASET_KEYS_BEFORE
    assert [rule.key for rule in RULES] == [
        "epochs", "train_batch_size", "eval_batch_size", "learning_rate", "nproc", "mixed_precision",
        "foundation_model", "peft_type", "peft_config", "content_weight", "cache_dir", "max_image_pixels",
        "encode_batch_size", "recipe", "learn_content_weight", "id_fallback", "id_fallback_config", "scale_item_inputs",
        "loss_type", "num_negatives",
        "train_unit", "n_groups", "item_encoder", "schedule", "patience", "warmup_epochs", "group_negatives", "regroup_every", "batch_mode",
        "grouping_sequence", "min_group_size", "grouping_truth", "model_selection",
    ]


def test_allowed_values_are_kept_once():
    from recbole_perpeft.data.sequential import TRAIN_UNITS
    from recbole_perpeft.trainer.selection import MODES

    assert TRAIN_UNITS is schema.TRAIN_UNITS
    assert MODES is schema.MODEL_SELECTION_MODES


def test_the_unknown_key_warning_knows_every_schema_key():
    from recbole_perpeft.config import properties_dir
    from recbole_perpeft.config_keys import known_config_keys

    assert set(schema.KEYS) <= known_config_keys(properties_dir())


@pytest.mark.parametrize("metric, topk", [
    ("NDCG@20", True), ("hit@10", True), ("MRR@5", True), ("Recall@1", True), ("AUC", False),
    ("NDCG", False), ("NDCG@0", False), ("NDCG@x", False), ("ItemCoverage@10", False), (None, False),
])
def test_top_k_metrics_are_recognised(metric, topk):
    assert is_topk_metric(metric) is topk


def test_group_selection_without_a_top_k_metric_is_refused():
    values = {"model_selection": "group", "n_groups": 4, "valid_metric": "AUC"}
    with pytest.raises(ConfigError, match="model_selection: group .* needs a top-k valid_metric .* got 'AUC'"):
        check_combinations(values, "PerPEFT")
    # every other combination of the three can work
    check_combinations({**values, "model_selection": "stage"}, "PerPEFT")
    check_combinations({**values, "n_groups": 1}, "PerPEFT")
    check_combinations({**values, "valid_metric": "Hit@10"}, "PerPEFT")
    check_combinations(values, "SASRec")


def test_group_selection_without_a_top_k_metric_fails_in_one_line_before_any_data(tmp_path, capsys):
    from recbole_perpeft.cli import main

    assert main(["--model=PerPEFT", "--dataset=mmdemo", f"--data_path={tmp_path / 'data'}",
                 "--valid_metric=AUC"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid configuration: model_selection: group"), err
    assert not (tmp_path / "data").exists()

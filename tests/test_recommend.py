"""Recommendations from saved models: API and CLI, stable across reloads, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import TINY_PERPEFT, run_cli

from recbole_perpeft.cli import main
from recbole_perpeft.data.mmdemo import generate_mmdemo
from recbole_perpeft.errors import CheckpointError, ConfigError, InvalidHistoryError
from recbole_perpeft.quick_start import close_log_handlers, run_recbole_perpeft
from recbole_perpeft.recommend import Recommender, UnknownItemError

TINY = {**TINY_PERPEFT, "plots": False}
SEQ_BASELINE = {"epochs": 1, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 2,
                "train_batch_size": 256, "show_progress": False, "state": "WARNING", "plots": False}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One PerPEFT run on small generated data: its checkpoint, the data's sequences, one reload."""
    root = tmp_path_factory.mktemp("rec")
    data = root / "data"
    generate_mmdemo(data / "mmrec", n_users=300, n_items=200, seed=11)
    with pytest.MonkeyPatch.context() as patch:  # RecBole writes log/ into the working directory
        patch.chdir(root)
        patch.setenv("RECBOLE_PERPEFT_HOME", str(root / "home"))
        try:
            record = run_recbole_perpeft(
                "PerPEFT", "mmrec",
                config_dict={**TINY, "data_path": str(data), "checkpoint_dir": str(root / "saved"),
                             "cache_dir": str(root / "cache")},
            )
        finally:
            close_log_handlers()
        recommender = Recommender.from_checkpoint(record["checkpoint"])
    sequences: dict[str, list[str]] = {}
    for line in (data / "mmrec" / "mmrec.inter").read_text().splitlines()[1:]:
        user, item, _ = line.split("\t")
        sequences.setdefault(user, []).append(item)
    return {"checkpoint": record["checkpoint"], "record": record, "sequences": sequences, "root": root,
            "data_path": str(data), "recommender": recommender}


def _train_baseline(trained, model: str) -> str:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(trained["root"])
        try:
            record = run_recbole_perpeft(
                model, "mmrec", config_dict={**SEQ_BASELINE, "data_path": trained["data_path"],
                                             "checkpoint_dir": str(trained["root"] / "saved")},
            )
        finally:
            close_log_handlers()
    return record["checkpoint"]


@pytest.fixture(scope="module")
def sasrec_checkpoint(trained):
    return _train_baseline(trained, "SASRec")


# ----------------------------------------------------------------------------- PerPEFT, API
def test_same_history_same_result_across_reloads(trained):
    history = trained["sequences"]["u0001"][:-1]
    first = trained["recommender"].recommend(history, k=15)
    second = Recommender.from_checkpoint(trained["checkpoint"]).recommend(history, k=15)
    assert first == second
    assert len(first.items) == 15 and first.scores == sorted(first.scores, reverse=True)
    assert not set(first.items) & set(history)  # already-seen items are excluded
    assert first.titles and all(isinstance(t, str) and t for t in first.titles)
    assert first.pairs() == list(zip(first.items, first.scores))
    assert trained["recommender"].device == torch.device("cpu")  # the default


def test_checkpoint_carries_the_final_run_config(trained):
    state = torch.load(trained["checkpoint"], weights_only=True)
    run = state["run_config"]
    assert run["model"] == "PerPEFT" and run["dataset"] == "mmrec"
    settings = run["settings"]
    json.dumps(settings)  # plain builtins only
    assert settings["data_path"] == str(Path(trained["data_path"]).resolve())
    # Defaults from the property files are stored too, not only what the run was given.
    assert settings["n_groups"] == 3 and settings["hidden_size"] == 32 and settings["field_separator"] == "\t"
    assert not {"device", "local_rank", "MODEL_TYPE", "valid_neg_sample_args"} & set(settings)
    assert settings["train_neg_sample_args"] is None  # as written, not RecBole's processed form
    rebuilt = trained["recommender"].config
    for key, value in settings.items():
        if key not in ("data_path", "show_progress", "state", "train_neg_sample_args"):
            assert rebuilt[key] == value, key


def test_the_trained_model_ranks_held_out_items_better_than_chance(trained):
    recommender = trained["recommender"]
    users = sorted(trained["sequences"])
    histories = [trained["sequences"][u][:-1] for u in users]
    results = recommender.recommend_batch(histories, k=20, user_ids=users)
    hits = sum(trained["sequences"][u][-1] in r.items for u, r in zip(users, results))
    # chance: 20 of ~190 unseen items, about 10.5 % of users
    assert hits / len(users) > 0.14  # measured 0.18 (seed 11, 3 epochs)
    assert len({tuple(r.items) for r in results}) > len(users) // 2  # not one list for everybody
    # a known user keeps the group the model assigned at training time
    model = recommender.model
    index = recommender.user_index[users[0]]
    assert results[0].group == int(model.group_of_user[index])
    # the batch gives what one-by-one calls give
    alone = recommender.recommend(histories[5], k=20, user_id=users[5])
    assert alone.items == results[5].items and alone.group == results[5].group
    assert alone.scores == pytest.approx(results[5].scores, rel=1e-5)


def test_new_user_is_routed_to_the_group_nearest_in_its_own_view(trained):
    recommender = trained["recommender"]
    model = recommender.model
    formed = int(model.groups_formed)
    assert formed >= 2 and bool(model.personalised)
    users = sorted(trained["sequences"])[:40]
    histories = [trained["sequences"][u][:5] for u in users]
    groups = [r.group for r in recommender.recommend_batch(histories, k=5)]
    assert all(0 <= g < formed for g in groups)
    assert len(set(groups)) >= 2  # different histories go to different groups
    assert groups == [r.group for r in recommender.recommend_batch(histories, k=5)]
    # the rule: each group encodes the history with its own item table; nearest centroid wins
    width = model.max_seq_length
    with torch.no_grad():
        for history, group in zip(histories[:8], groups[:8]):
            ids = recommender.item_ids(history)[-width:]
            seq = torch.zeros(1, width, dtype=torch.long)
            seq[0, : len(ids)] = torch.tensor(ids)
            length = torch.tensor([len(ids)])
            distances = [
                float((model.sequence_output(seq, length, g) - model.centroids[g]).norm())
                for g in range(formed)
            ]
            assert group == min(range(formed), key=distances.__getitem__)
    # a known user keeps their stored group whatever the history says
    stored = {u: int(model.group_of_user[recommender.user_index[u]]) for u in users}
    user, history = next(
        (u, h) for u in users for h, g in zip(histories, groups) if stored[u] != g
    )
    assert recommender.recommend(history, k=5, user_id=user).group == stored[user]
    assert recommender.recommend(history, k=5, user_id="no-such-user").group in range(formed)


def test_unknown_items_and_bad_inputs_are_clear_errors(trained):
    recommender = trained["recommender"]
    with pytest.raises(UnknownItemError, match="not-an-item") as caught:
        recommender.recommend(["i0001", "not-an-item"])
    assert "i0001" not in str(caught.value) and isinstance(caught.value, ConfigError)
    with pytest.raises(UnknownItemError, match=r"\[PAD\]"):
        recommender.recommend(["[PAD]"])  # padding is not an item
    with pytest.raises(UnknownItemError, match="history 1: .*bad-2"):
        recommender.recommend_batch([["i0001"], ["bad-2"]])
    with pytest.raises(InvalidHistoryError, match="empty history"):
        recommender.recommend([])
    with pytest.raises(InvalidHistoryError, match="not one string"):
        recommender.recommend("i0001 i0002")
    with pytest.raises(ConfigError, match="k must be"):
        recommender.recommend(["i0001"], k=0)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Recommender.from_checkpoint("missing.pth")
    with pytest.raises(ConfigError, match="invalid device"):
        Recommender.from_checkpoint(trained["checkpoint"], device="nope")


def test_padding_never_and_fewer_candidates_than_k(trained):
    recommender = trained["recommender"]
    catalogue = list(recommender.item_token[1:])
    almost_all = catalogue[:-3]  # only 3 items left to recommend
    short, normal = recommender.recommend_batch([almost_all, catalogue[:4]], k=10)
    assert sorted(short.items) == sorted(catalogue[-3:])  # no filler, no padding
    assert len(normal.items) == 10 and "[PAD]" not in normal.items
    kept = recommender.recommend(catalogue[:4], k=len(catalogue), exclude_seen=False)
    assert len(kept.items) == len(catalogue) and set(catalogue[:4]) <= set(kept.items)


def test_checkpoint_with_code_is_refused(trained, tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    state = torch.load(trained["checkpoint"], weights_only=True)
    state["payload"] = Payload()
    evil = tmp_path / "evil.pth"
    torch.save(state, evil)
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        Recommender.from_checkpoint(evil)
    assert not marker.exists()
    assert main([f"--recommend={evil}", "--history=i0001"]) == 2
    torch.load(evil, weights_only=False)  # what a full unpickler would have done
    assert marker.is_dir()


# ----------------------------------------------------------------------------- CLI
def test_cli_one_history_and_batch_file(trained, tmp_path, capsys):
    checkpoint = str(Path(trained["checkpoint"]).resolve())
    history = trained["sequences"]["u0002"][:-1]
    assert main([f"--recommend={checkpoint}", f"--history={' '.join(history)}", "--topk=5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("PerPEFT on mmrec: top 5, group ") and "new user" in lines[0]
    assert lines[1].split()[:3] == ["rank", "item", "score"] and len(lines) == 2 + 5
    api = trained["recommender"].recommend(history, k=5)
    assert [line.split()[1] for line in lines[2:]] == api.items

    users = sorted(trained["sequences"])[:6]
    file = tmp_path / "histories.txt"
    file.write_text("# user<TAB>items\n" + "".join(
        f"{u}\t{' '.join(trained['sequences'][u][:-1])}\n" for u in users[:3]
    ) + "\n" + "".join(f"{' '.join(trained['sequences'][u][:4])}\n" for u in users[3:]))
    out = tmp_path / "recs.jsonl"
    batch = run_cli(f"--recommend={checkpoint}", f"--histories={file}", "--topk=5", f"--output={out}")
    assert batch.returncode == 0, batch.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and [row["user_id"] for row in rows] == [*users[:3], None, None, None]
    histories = [trained["sequences"][u][:-1] for u in users[:3]] + [trained["sequences"][u][:4] for u in users[3:]]
    api_rows = trained["recommender"].recommend_batch(histories, k=5, user_ids=[*users[:3], None, None, None])
    for row, result in zip(rows, api_rows):
        assert row["items"] == result.items and row["group"] == result.group
        assert row["scores"] == pytest.approx(result.scores, rel=1e-5)


def test_cli_bad_inputs_are_one_line_and_exit_2(trained, tmp_path, capsys):
    checkpoint = trained["checkpoint"]
    assert main([f"--recommend={checkpoint}", "--history=i0001 nope-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope-1" in err[0]
    file = tmp_path / "h.txt"
    file.write_text("i0001 i0002\n\nu0001\ti0003 oops-7\n")
    assert main([f"--recommend={checkpoint}", f"--histories={file}"]) == 2
    err = capsys.readouterr().err
    assert f"{file}:3:" in err and "oops-7" in err
    assert main(["--recommend=nothing-here.pth", "--history=i0001"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- other models
@pytest.mark.parametrize("model", ["SASRec", "BERT4Rec"])
def test_recbole_model_ranks_as_in_its_own_evaluation(trained, sasrec_checkpoint, model):
    from recbole.data import data_preparation

    from recbole_perpeft.run import create_dataset

    checkpoint = sasrec_checkpoint if model == "SASRec" else _train_baseline(trained, model)
    recommender = Recommender.from_checkpoint(checkpoint)
    assert recommender.titles is None and recommender.model.__class__.__name__ == model
    result = recommender.recommend(["i0001", "i0050", "i0100"], k=10)
    assert len(result.items) == 10 and result.group == 0
    assert not {"i0001", "i0050", "i0100"} & set(result.items)
    # RecBole's own test rows, scored by the model directly, rank as the raw-id API does.
    config = recommender.config
    _, _, test_data = data_preparation(config, create_dataset(config))
    rows = test_data._dataset.inter_feat[torch.arange(4)]
    net = recommender.model
    with torch.no_grad():
        direct = net.full_sort_predict(rows.to(recommender.device))[:, : len(recommender.item_token)]
    direct[:, 0] = -torch.inf
    for row in range(4):
        length = int(rows[net.ITEM_SEQ_LEN][row])
        history = [recommender.item_token[i] for i in rows[net.ITEM_SEQ][row][:length].tolist()]
        got = recommender.recommend(history, k=10, exclude_seen=False)
        assert got.items == [recommender.item_token[i] for i in torch.topk(direct[row], 10).indices.tolist()]


def test_checkpoint_without_run_config_needs_the_dataset(trained, sasrec_checkpoint, tmp_path, capsys):
    checkpoint = sasrec_checkpoint
    state = torch.load(checkpoint, weights_only=True)
    del state["run_config"]
    old = tmp_path / "old.pth"
    torch.save(state, old)
    with pytest.raises(CheckpointError, match="lacks a run config.*--dataset"):
        Recommender.from_checkpoint(old)
    assert main([f"--recommend={old}", "--history=i0001"]) == 2
    assert "lacks a run config" in capsys.readouterr().err
    history = ["i0001", "i0050", "i0100"]
    settings = {key: value for key, value in SEQ_BASELINE.items() if key != "plots"}
    rebuilt = Recommender.from_checkpoint(old, dataset="mmrec", data_path=trained["data_path"], **settings)
    assert rebuilt.recommend(history) == Recommender.from_checkpoint(checkpoint).recommend(history)
    with pytest.raises(CheckpointError, match="do not fit"):
        Recommender.from_checkpoint(old, dataset="mmrec", data_path=trained["data_path"], hidden_size=8)
    with pytest.raises(CheckpointError, match="holds model 'SASRec', not 'GRU4Rec'"):
        Recommender.from_checkpoint(old, model="GRU4Rec", dataset="mmrec")


def test_a_checkpoint_is_restored_without_building_the_splits(trained, monkeypatch):
    """``recommend`` rebuilds the dataset and the model only: a split would be wasted work."""
    from recbole_perpeft.data.sequential import PluginSequentialDataset

    def no_split(self):
        raise AssertionError("recommend built the train/valid/test split")

    monkeypatch.setattr(PluginSequentialDataset, "build", no_split)
    monkeypatch.setattr("recbole_perpeft.run.data_preparation", no_split)
    restored = Recommender.from_checkpoint(trained["checkpoint"])
    histories = [trained["sequences"][user][:6] for user in sorted(trained["sequences"])[:12]]
    users = [None, *sorted(trained["sequences"])[1:12]]
    assert restored.recommend_batch(histories, k=10, user_ids=users) == \
        trained["recommender"].recommend_batch(histories, k=10, user_ids=users)

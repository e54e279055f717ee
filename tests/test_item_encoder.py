"""The item encoder is built outside PerPEFT and chosen by name (recbole_perpeft.item_encoder)."""

from __future__ import annotations

import builtins
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from recbole_perpeft.data.sequential import UserItems
from recbole_perpeft.errors import ConfigError
from recbole_perpeft.item_encoder import build_item_encoder, item_encoder_names, register_item_encoder
from recbole_perpeft.peft_backends.base import GroupedItemEncoder

N_USERS, N_ITEMS, GROUPS = 6, 9, 2


class TableEncoder(GroupedItemEncoder):
    """One learned feature row per item and group: an encoder that needs no file."""

    def __init__(self, n_groups: int, feature_dim: int = 4) -> None:
        super().__init__()
        self.n_groups, self.feature_dim, self.n_items = n_groups, feature_dim, N_ITEMS
        self.tables = nn.ParameterList(nn.Parameter(torch.randn(N_ITEMS, feature_dim)) for _ in range(n_groups))

    def encode(self, item_ids: torch.Tensor, group: int) -> torch.Tensor:
        return self.tables[group][item_ids]

    def copy_group(self, source: int, target: int) -> None:
        self.tables[target].data.copy_(self.tables[source].data)

    def group_parameters(self, group: int):
        yield self.tables[group]

    def foundation_parameter_count(self) -> int:
        return 0


class OfflineDataset:
    """What the model reads of a dataset: field sizes and the users' training items; no data folder."""

    def __init__(self, config) -> None:
        self.user_num = N_USERS
        self.history = UserItems.from_pairs(torch.tensor([1, 1, 2, 3, 4, 5]), torch.tensor([1, 2, 3, 4, 5, 6]),
                                            N_USERS, N_ITEMS)
        self.fields = {config["USER_ID_FIELD"]: N_USERS, config["ITEM_ID_FIELD"]: N_ITEMS}

    def num(self, field: str) -> int:
        return self.fields[field]


def _offline_config(tmp_path):
    """PerPEFT's config for a dataset whose folder is gone by the time the model is built.

    (The config itself insists on finding the dataset, so the folder exists while it is read.)
    """
    from recbole_perpeft.run import build_config

    folder = tmp_path / "no_data" / "nowhere"
    folder.mkdir(parents=True)
    (folder / "nowhere.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n", encoding="utf-8")
    config = build_config("PerPEFT", "nowhere", config_dict={
        "n_groups": GROUPS, "data_path": str(tmp_path / "no_data"), "cache_dir": str(tmp_path / "no_cache"),
        "foundation_model": "tiny-clip", "device": "cpu", "show_progress": False,
    })
    shutil.rmtree(tmp_path / "no_data")
    return config


def test_perpeft_is_built_from_a_given_encoder_without_opening_a_file(tmp_path, monkeypatch):
    from recbole_perpeft.model import PerPEFT

    config = _offline_config(tmp_path)
    dataset = OfflineDataset(config)
    encoder = TableEncoder(GROUPS)

    def refuse(*args, **kwargs):
        raise AssertionError(f"PerPEFT.__init__ opened a file: {args[:1]}")

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = PerPEFT(config, dataset, item_encoder=encoder)
    monkeypatch.undo()

    assert model.items.encoder is encoder
    assert not (tmp_path / "no_data").exists() and not (tmp_path / "no_cache").exists()
    scores = model.eval().score(torch.tensor([[1, 2, 0]]), torch.tensor([2]), torch.tensor([1]))
    assert scores.shape == (1, N_ITEMS) and torch.isfinite(scores).all()


def test_the_config_names_the_encoder_the_model_is_handed(tmp_path):
    from recbole_perpeft.model import PerPEFT

    built = []

    @register_item_encoder("test-table")
    def build_table(config, dataset, n_groups):
        built.append(n_groups)
        return TableEncoder(n_groups)

    config = _offline_config(tmp_path)
    config["item_encoder"] = "test-table"
    model = PerPEFT(config, OfflineDataset(config))
    assert built == [GROUPS] and isinstance(model.items.encoder, TableEncoder)
    assert {"default", "test-table"} <= set(item_encoder_names())


def test_an_unknown_encoder_name_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="item_encoder must be one of .*default.*; got 'nonsense'"):
        build_item_encoder({"item_encoder": "nonsense"}, SimpleNamespace(), 1)


def test_a_name_cannot_be_registered_twice():
    register_item_encoder("test-once")(TableEncoder)
    with pytest.raises(ValueError, match="already registered"):
        register_item_encoder("test-once")(lambda config, dataset, n_groups: TableEncoder(n_groups))


class RecordingConfig:
    """A config that remembers which keys were read."""

    def __init__(self, config) -> None:
        self.config, self.read = config, set()

    def __getitem__(self, key):
        self.read.add(key)
        return self.config[key]


def test_given_its_encoder_the_model_reads_no_infrastructure_key(tmp_path):
    from recbole_perpeft.model import PerPEFT

    config = _offline_config(tmp_path)
    recording = RecordingConfig(config)
    PerPEFT(recording, OfflineDataset(config), item_encoder=TableEncoder(GROUPS))
    infrastructure = {"cache_dir", "show_progress", "max_image_pixels", "foundation_model", "peft_type",
                      "peft_config", "data_path", "seed", "item_encoder", "image_dir", "checkpoint_dir"}
    assert recording.read & infrastructure == set()
    assert {"hidden_size", "n_groups", "content_weight"} <= recording.read

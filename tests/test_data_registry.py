"""Dataset registry: embedded datasets, the paper's four, converted ones, helpful errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from recbole_perpeft.data import registry
from recbole_perpeft.data.registry import (
    PAPER_DATASETS,
    DatasetNotFoundError,
    list_datasets,
    resolve_dataset_dir,
)


@pytest.fixture(autouse=True)
def small_mmdemo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the registry's mmdemo generation small in these tests (its content is tested elsewhere)."""
    from recbole_perpeft.data.mmdemo import generate_mmdemo

    def small(out: Path) -> Path:
        return generate_mmdemo(out, n_users=50, n_items=64, max_len=8)

    monkeypatch.setattr(registry, "generate_mmdemo", small)


def test_ml100k_is_recboles_embedded_copy() -> None:
    d = resolve_dataset_dir("ml-100k", None)
    assert (
        (d / "ml-100k.inter").is_file()
        and "recbole" in str(d)
        and "dataset_example" in str(d)
    )


def test_mmdemo_generated_into_data_path(tmp_path: Path) -> None:
    d = resolve_dataset_dir("mmdemo", tmp_path)
    assert d == tmp_path / "mmdemo" and (d / "mmdemo.inter").is_file()
    assert resolve_dataset_dir("mmdemo", str(tmp_path)) == d  # found on the second call
    assert "mmdemo" in list_datasets(tmp_path)


def test_mmdemo_falls_back_to_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECBOLE_PERPEFT_HOME", str(tmp_path / "home"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    d = resolve_dataset_dir("mmdemo", blocker / "data")  # not creatable
    assert (
        d == tmp_path / "home" / "datasets" / "mmdemo" and (d / "mmdemo.item").is_file()
    )
    assert resolve_dataset_dir("mmdemo", None) == d


def test_paper_dataset_missing_explains_conversion(tmp_path: Path) -> None:
    expected = {
        "toys_games": "Toys_and_Games",
        "sports_outdoors": "Sports_and_Outdoors",
        "beauty_care": "Beauty_and_Personal_Care",
        "arts": "Arts_Crafts_and_Sewing",
    }
    assert {k: v.amazon_category for k, v in PAPER_DATASETS.items()} == expected
    assert (
        PAPER_DATASETS["sports_outdoors"].users,
        PAPER_DATASETS["sports_outdoors"].items,
    ) == (25_363, 15_701)
    for name, cat in expected.items():
        with pytest.raises(DatasetNotFoundError) as info:
            resolve_dataset_dir(name, tmp_path)
        msg = str(info.value)
        assert (
            f"perpeft-release RELEASE_DIR {name} --out {tmp_path} --trust-pickles"
            in msg
        )
        assert (
            f"--reviews {cat}.jsonl.gz --meta meta_{cat}.jsonl.gz --name {name}" in msg
        )
        assert isinstance(info.value, FileNotFoundError)


def test_converted_and_unknown_datasets(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n"
    )
    (tmp_path / "arts").mkdir()
    (tmp_path / "arts" / "arts.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n"
    )
    (tmp_path / "junk").mkdir()  # no junk.inter: not a dataset
    assert resolve_dataset_dir("mine", tmp_path) == tmp_path / "mine"
    assert resolve_dataset_dir("arts", tmp_path) == tmp_path / "arts"
    assert list_datasets(tmp_path) == ["arts", "mine", "ml-100k", "mmdemo"]
    with pytest.raises(DatasetNotFoundError) as info:
        resolve_dataset_dir("nothing", tmp_path)
    msg = str(info.value)
    assert "ml-100k, mmdemo" in msg and "arts, mine" in msg and "toys_games" in msg
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        resolve_dataset_dir("nothing", tmp_path / "absent")
    with pytest.raises(DatasetNotFoundError, match="invalid"):
        resolve_dataset_dir("../etc", tmp_path)
    assert list_datasets(None) == ["ml-100k", "mmdemo"]

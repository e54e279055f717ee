"""Files written atomically keep the permissions the umask asks for (0644 under 022), not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from conftest import file_mode_for_umask

from recbole_perpeft.atomic_write import atomic_open, atomic_write_text
from recbole_perpeft.checkpoint import atomic_torch_save
from recbole_perpeft.data.mmdemo import generate_mmdemo


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_checkpoints_and_text_files_are_0644_under_umask_022(tmp_path, umask_022):
    atomic_torch_save({"w": torch.ones(3)}, tmp_path / "saved" / "model.pth")
    atomic_write_text(tmp_path / "data.inter", "user_id:token\n")
    assert _mode(tmp_path / "saved" / "model.pth") == 0o644 and _mode(tmp_path / "data.inter") == 0o644
    assert torch.equal(torch.load(tmp_path / "saved" / "model.pth", weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.inter", "saved"]  # no temporary left


def test_a_stricter_umask_is_honoured_too(tmp_path):
    previous = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.tsv", "x\n")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "private.tsv") == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "kept.txt"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["kept.txt"]


def test_generated_mmdemo_files_follow_the_umask(tmp_path):
    folder = generate_mmdemo(tmp_path / "mm", n_users=20, n_items=80, seed=1)
    written = [folder / name for name in ("mm.inter", "mm.item", "groups.tsv", "README.txt", "generator.json")]
    written.append(next((folder / "images").iterdir()))
    for path in written:
        assert file_mode_for_umask(path), path
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(folder) == 0o777 & ~umask  # the folder too (it is published by a rename)

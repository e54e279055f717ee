"""Shared fixtures: every test runs in its own working directory (RecBole writes log/ and saved/)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Under pytest-xdist each test process gets one torch/OpenMP thread (subprocesses inherit it):
# two processes on two cores, never four threads fighting over them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Small, fast settings for RecBole's sequential baselines on ml-100k.
SMALL_SEQ = {
    "MAX_ITEM_LIST_LENGTH": 10,
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "train_batch_size": 1024,
    "eval_batch_size": 1024,
    "user_inter_num_interval": "[5,60]",
    "show_progress": False,
    "state": "WARNING",
    "plots": False,  # drawing costs a second or more per run; test_plots turns them on
}


# A PerPEFT run small enough for a test: tiny CLIP, 3 epochs (1 warm-up), 3 groups.
TINY_PERPEFT = {
    "foundation_model": "tiny-clip",
    "train_batch_size": 64,
    "learning_rate": 2.0e-3,
    "weight_decay": 0.0,
    "epochs": 3,
    "warmup_epochs": 1,
    "n_groups": 3,
    "id_fallback": False,  # the ID-only check doubles a run: tests/test_id_check.py covers it
    "show_progress": False,
    "state": "WARNING",
    "plots": False,
}


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> str:
    """The data_path of ``mmsmall``: a small generated mmdemo (300 users, 200 items), read-only."""
    from recbole_perpeft.data.mmdemo import generate_mmdemo

    root = tmp_path_factory.mktemp("data")
    generate_mmdemo(root / "mmsmall", n_users=300, n_items=200, seed=5)
    return str(root)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECBOLE_PERPEFT_HOME", str(tmp_path / "home"))
    yield


def file_mode_for_umask(path) -> bool:
    """True when ``path`` has the mode an ordinary ``open`` gives under the current umask."""
    import stat

    umask = os.umask(0)
    os.umask(umask)
    return stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def cli_args(settings: dict) -> list[str]:
    return [f"--{key}={value}" for key, value in settings.items()]


def run_cli(*args: str, timeout: int = 600):
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, str(REPO / "run_recbole_perpeft.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )

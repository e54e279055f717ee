"""Kill a training run with SIGKILL mid-epoch, resume it, and get the uninterrupted metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, SMALL_SEQ, cli_args

from recbole_perpeft.data.mmdemo import generate_mmdemo

SASREC = ["--model=SASRec", "--dataset=ml-100k", "--epochs=4", *cli_args(SMALL_SEQ)]


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, str(REPO / "run_recbole_perpeft.py"), *args],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_resume_file(cwd, process, epoch_files: int, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = list((cwd / "saved").glob("*.last.pth")) if (cwd / "saved").is_dir() else []
        if files:
            import torch

            try:
                state = torch.load(files[0], weights_only=True)
            except Exception:  # being replaced right now: atomic rename, try again
                state = None
            if state is not None and state["epoch"] + 1 >= epoch_files:
                return files[0]
        assert process.poll() is None, process.stderr.read()[-2000:]
        time.sleep(0.05)
    raise AssertionError("no resume file appeared")


def _kill_and_resume(args, tmp_path, after_epochs: int):
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    process = _cli([*args, f"--result_file={interrupted / 'r.json'}"], interrupted)
    resume_file = _wait_for_resume_file(interrupted, process, after_epochs)
    process.send_signal(signal.SIGKILL)  # mid-way through the next epoch
    process.wait()
    assert not (interrupted / "r.json").exists()
    resumed = _cli([*args, "--resume=latest", f"--result_file={interrupted / 'r.json'}"], interrupted)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    assert resume_file.exists()
    return json.loads((interrupted / "r.json").read_text())


def _uninterrupted(args, tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    process = _cli([*args, f"--result_file={clean / 'r.json'}"], clean)
    assert process.wait(timeout=600) == 0, process.stderr.read()[-3000:]
    return json.loads((clean / "r.json").read_text())


def test_sasrec_killed_mid_epoch_resumes_to_identical_metrics(tmp_path):
    resumed = _kill_and_resume(SASREC, tmp_path, after_epochs=2)
    clean = _uninterrupted(SASREC, tmp_path)
    assert resumed["test_result"] == clean["test_result"]
    assert resumed["best_valid_result"] == clean["best_valid_result"]
    assert len(resumed["train_epoch_seconds"]) == 4


@pytest.mark.parametrize("after_epochs", [1, 3])  # before and after grouping (warm-up = 2)
def test_perpeft_killed_mid_epoch_resumes_to_identical_metrics(tmp_path, after_epochs):
    data = tmp_path / "data"
    generate_mmdemo(data / "mmsmall", n_users=300, n_items=200, seed=5)
    args = [
        "--model=PerPEFT", "--dataset=mmsmall", f"--data_path={data}", "--foundation_model=tiny-clip",
        "--epochs=4", "--warmup_epochs=2", "--n_groups=3", "--train_batch_size=64",
        "--learning_rate=2e-3", "--show_progress=False", f"--cache_dir={tmp_path / 'cache'}",
        "--id_fallback=False",  # the content run is what is resumed (the ID-only check retrains its twin)
    ]
    resumed = _kill_and_resume(args, tmp_path, after_epochs)
    clean = _uninterrupted(args, tmp_path)
    assert resumed["test_result"] == clean["test_result"]
    assert resumed["groups"] == clean["groups"]
    assert [e["event"] for e in resumed["grouping_log"]] == ["grouped"]


def test_kill_during_checkpoint_write_never_leaves_a_truncated_checkpoint(tmp_path):
    import torch

    from recbole_perpeft.checkpoint import atomic_torch_save

    target = tmp_path / "model.last.pth"
    atomic_torch_save({"epoch": 1, "w": torch.zeros(4)}, target)
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, torch; from recbole_perpeft.checkpoint import atomic_torch_save\n"
         "print('writing', flush=True)\n"
         "while True: atomic_torch_save({'epoch': 2, 'w': torch.ones(50_000_000)}, sys.argv[1])",
         str(target)],
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True,
    )
    assert writer.stdout.readline().strip() == "writing"
    deadline = time.time() + 60
    while not list(tmp_path.glob(".model.last.pth.*.tmp")) and time.time() < deadline:
        time.sleep(0.01)  # wait until a temporary file is being written
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    state = torch.load(target, weights_only=True)  # the published file is always whole
    assert state["epoch"] in (1, 2) and state["w"].numel() in (4, 50_000_000)

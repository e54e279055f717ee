"""Helpers the benchmark scripts share: running the CLI in a clean process, writing tables."""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
KEEP_WORKDIR = "BENCH_KEEP_WORKDIR"  # set to 1: scratch folders stay after the benchmark
_scratch_folders: list[Path] = []


def scratch_folder(prefix: str) -> Path:
    """A new temporary folder for a benchmark's runs (data, caches, logs, checkpoints), removed
    when the script exits: results are written elsewhere, and a paper-scale run's caches take
    gigabytes. Kept when the script fails (its path is printed) or when BENCH_KEEP_WORKDIR=1."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if not _scratch_folders:
        atexit.register(_remove_scratch_folders)
    _scratch_folders.append(folder)
    return folder


def _remove_scratch_folders() -> None:
    # Python sets sys.last_value when an exception ended the script, before atexit runs.
    if hasattr(sys, "last_value") or os.environ.get(KEEP_WORKDIR) == "1":
        for folder in _scratch_folders:
            print(f"work files kept in {folder}", file=sys.stderr)
        return
    for folder in _scratch_folders:
        shutil.rmtree(folder, ignore_errors=True)


def last_flag_wins(flags: list[str]) -> list[str]:
    """``flags`` with each ``--KEY`` kept once, at its last value and position (later flags override
    earlier ones: a row's --n_groups=1 over its setting's, a variant's flags over the shared ones)."""
    last = {flag.split("=", 1)[0]: index for index, flag in enumerate(flags)}
    return [flag for index, flag in enumerate(flags) if last[flag.split("=", 1)[0]] == index]


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if commit.returncode == 0:
        info["commit"] = commit.stdout.strip()
    return info


def run_cli(args: list[str], workdir: Path | None = None, timeout: int = 3600,
            entry: list[str] | None = None, id_check: bool = False) -> dict[str, Any]:
    """Run ``run_recbole_perpeft.py`` (or the command ``entry``, which takes the same flags) in its
    own process (clean peak-memory figures).

    A benchmark measures the model it names: the ID-only check (``id_fallback``), which may serve
    another model, is off unless ``id_check`` (the accuracy benchmark: the defaults as a user gets
    them) or the flags set it."""
    if not id_check and not any(flag.startswith("--id_fallback=") for flag in args):
        args = [*args, "--id_fallback=False"]
    workdir = Path(workdir or scratch_folder("bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result_file = workdir / f"result-{len(list(workdir.glob('result-*.json')))}.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    completed = subprocess.run(
        [*(entry or [sys.executable, str(REPO / "run_recbole_perpeft.py")]), *args, f"--result_file={result_file}",
         "--show_progress=False", "--state=WARNING"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"run failed ({' '.join(args)}):\n{completed.stderr[-3000:]}")
    record = json.loads(result_file.read_text())
    # the whole process, set-up included (data, content and IISAN caches, grouping, evaluation)
    record["wall_seconds"] = time.perf_counter() - started
    return record


def run_and_keep(file: Path, args: list[str], recorded_flags: list[str], workdir: Path, **run_cli_options: Any
                 ) -> dict[str, Any]:
    """:func:`run_cli`, then the record kept in ``file`` (a benchmark's resumable run) with the
    flags it names the run by and the commit it ran at."""
    record = run_cli(args, workdir=workdir, **run_cli_options)
    record["flags"] = recorded_flags
    record["commit"] = machine().get("commit")
    file.write_text(json.dumps(record, indent=1) + "\n")
    return record


def content_train_seconds(record: dict[str, Any]) -> float:
    """A run's own training seconds; with the ID-only check (``id_check``), the content run's (the
    record's own epochs may be the ID-only twin's, when that was served)."""
    if "id_check" in record:
        return float(record["id_check"]["content"]["train_seconds"])
    return float(sum(record.get("train_epoch_seconds", [])))


def id_check_train_seconds(record: dict[str, Any]) -> float:
    """What the ID-only check added to a run: its twin's training seconds (0 without the check)."""
    return float(record["id_check"]["id_only"]["train_seconds"]) if "id_check" in record else 0.0


def mean_std(values: list[float]) -> str:
    """``mean ± std`` to 4 decimals; a single value alone."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def write_outputs(stem: Path, payload: dict[str, Any], table: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table)
    print(table)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"

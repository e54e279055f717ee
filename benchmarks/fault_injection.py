"""Kill a PerPEFT run with SIGKILL at random moments, resume it each time, compare with a clean run.

Kills land anywhere: mid-epoch, mid-evaluation, mid-checkpoint write. Checkpoints are written
to a temporary file and renamed, so the newest resume file is always whole; each restart
continues with ``--resume=latest`` until the run finishes.

    python benchmarks/fault_injection.py --kills 4
Writes benchmarks/results/fault_injection.{json,md}; exits 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO, machine, markdown_table, scratch_folder, write_outputs  # noqa: E402
from recbole_perpeft.data.mmdemo import generate_mmdemo  # noqa: E402


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, str(REPO / "run_recbole_perpeft.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fault_injection"))
    args = parser.parse_args()
    work = scratch_folder("faults-")
    generate_mmdemo(work / "data" / "mmfault", n_users=300, n_items=200, seed=3)
    run_args = ["--model=PerPEFT", "--dataset=mmfault", f"--data_path={work / 'data'}",
                "--foundation_model=tiny-clip", f"--epochs={args.epochs}", "--warmup_epochs=2", "--n_groups=3",
                "--train_batch_size=32", "--learning_rate=2e-3", "--show_progress=False",
                f"--cache_dir={work / 'cache'}"]

    clean_dir = work / "clean"
    clean_dir.mkdir()
    start = time.perf_counter()
    clean = _start([*run_args, f"--result_file={clean_dir / 'r.json'}"], clean_dir)
    assert clean.wait() == 0, clean.stderr.read()[-2000:]
    clean_seconds = time.perf_counter() - start

    rng = random.Random(args.seed)
    faulty_dir = work / "faulty"
    faulty_dir.mkdir()
    kills, restarts = [], 0
    result = faulty_dir / "r.json"
    while not result.exists():
        extra = ["--resume=latest"] if list((faulty_dir / "saved").glob("*.last.pth")) else []
        process = _start([*run_args, *extra, f"--result_file={result}"], faulty_dir)
        restarts += bool(extra)
        if len(kills) < args.kills:
            delay = rng.uniform(0.2, 1.0) * clean_seconds / 2
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills.append(round(delay, 2))
                continue
        code = process.wait()
        if code != 0:
            raise SystemExit(f"a restart failed:\n{process.stderr.read()[-3000:]}")
    faulty = json.loads(result.read_text())
    reference = json.loads((clean_dir / "r.json").read_text())
    same = faulty["test_result"] == reference["test_result"] and faulty["groups"] == reference["groups"]
    payload = {"machine": machine(), "kills_after_seconds": kills, "restarts": restarts,
               "clean_test_result": reference["test_result"], "resumed_test_result": faulty["test_result"],
               "identical": same}
    table = markdown_table(
        ["kills", "restarts", "clean NDCG@20", "killed+resumed NDCG@20", "identical"],
        [[len(kills), restarts, reference["test_result"]["ndcg@20"], faulty["test_result"]["ndcg@20"], same]],
    )
    write_outputs(Path(args.out), payload, table)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()

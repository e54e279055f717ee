"""Which training batch the default recipe takes: a sweep on Amazon Scientific (validation only).

The sampled softmax scores each step's targets against the step's own items plus 1024 shared
negatives, so a larger batch brings more (in-batch) negatives and fewer, cheaper-per-target
steps. Every row is global PEFT or PerPEFT with IISAN over MiniLM titles, seed 2020, the
default recipe otherwise, the ID-only check off (the model named is the model measured)::

    OMP_NUM_THREADS=1 python benchmarks/batch_sweep.py

Records go to ``results/batch_sweep_runs/`` (a row whose record exists is not run again; remove
it to re-run), the table to ``results/batch_sweep.{json,md}``. The choice is made on the
validation column; test is reported, never used. The ``fixed`` rows are the hand-set schedule the
default replaced (20 epochs, PerPEFT grouped after 5, batch 64): the training seconds of the
other rows are also given as a ratio to them, which compares only between records made on one
machine under the same load (what else ran beside them is not recorded: run the rows you compare
back to back). "best epoch" is the epoch with the best validation over all users; PerPEFT serves
each group from its own best epoch, so its validation score can exceed that epoch's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, markdown_table, run_and_keep, scratch_folder, write_outputs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COMMON = ["--model=PerPEFT", "--dataset=scientific", "--foundation_model=all-MiniLM-L6-v2", "--peft_type=iisan",
          "--seed=2020", "--plots=False"]
GLOBAL = ["--n_groups=1"]
FIXED_20 = ["--schedule=fixed", "--epochs=20", "--warmup_epochs=5", "--train_batch_size=64"]
# name -> (flags, the fixed row its seconds are compared with)
ROWS: dict[str, tuple[list[str], str]] = {
    "global, fixed 20 epochs, batch 64": ([*GLOBAL, *FIXED_20], ""),
    "global, batch 64": ([*GLOBAL, "--train_batch_size=64"], "global, fixed 20 epochs, batch 64"),
    "global, batch 64, lr 1e-3": ([*GLOBAL, "--train_batch_size=64", "--learning_rate=1e-3"],
                                  "global, fixed 20 epochs, batch 64"),
    "global, batch 128": ([*GLOBAL, "--train_batch_size=128"], "global, fixed 20 epochs, batch 64"),
    "global, batch 256 (default)": ([*GLOBAL, "--train_batch_size=256"], "global, fixed 20 epochs, batch 64"),
    "global, batch 512": ([*GLOBAL, "--train_batch_size=512"], "global, fixed 20 epochs, batch 64"),
    "PerPEFT, fixed 20 epochs, batch 64": ([*FIXED_20], ""),
    "PerPEFT, batch 64": (["--train_batch_size=64"], "PerPEFT, fixed 20 epochs, batch 64"),
    "PerPEFT, batch 256 (default)": (["--train_batch_size=256"], "PerPEFT, fixed 20 epochs, batch 64"),
}


def file_name(row: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in row).strip("_") + ".json"


def table(records: dict[str, dict]) -> str:
    rows = []
    for row, (_, fixed_row) in ROWS.items():
        record = records.get(row)
        if record is None:
            rows.append([row, "not run", "", "", "", "", ""])
            continue
        seconds = record["schedule"]["train_seconds"]
        fixed = records.get(fixed_row)
        ratio = f"{seconds / fixed['schedule']['train_seconds']:.2f}x" if fixed else "-"
        best_epoch = max(record["valid_scores"], key=lambda pair: pair[1])[0]
        rows.append([row, f"{record['best_valid_score']:.4f}", best_epoch, len(record["train_epoch_seconds"]),
                     f"{seconds:.0f}", ratio, f"{record['test_result']['ndcg@20']:.4f}"])
    return markdown_table(["row", "valid NDCG@20", "best epoch", "epochs run", "train s", "vs fixed",
                           "test NDCG@20"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--data_path", default=None, help="where scientific was converted "
                        "(default $RECBOLE_PERPEFT_HOME/datasets, as benchmarks/accuracy.py converts it)")
    parser.add_argument("--runs", default=str(RESULTS / "batch_sweep_runs"))
    parser.add_argument("--out", default=str(RESULTS / "batch_sweep"))
    args = parser.parse_args(argv)
    from recbole_perpeft.cache import perpeft_home

    data_path = Path(args.data_path) if args.data_path else perpeft_home() / "datasets"
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    workdir = scratch_folder("bench-batch-")
    records = {}
    for row in ROWS:
        file = runs / file_name(row)
        if not file.is_file() and row in args.rows:
            print(f"{row} ...", flush=True)
            flags = [*COMMON, f"--data_path={data_path}", *ROWS[row][0]]
            records[row] = run_and_keep(file, flags, flags, workdir / file.stem)
        elif file.is_file():
            records[row] = json.loads(file.read_text())
    here = machine()
    text = f"## Training batch sweep, Amazon Scientific, IISAN, seed 2020 ({here['device']})\n\n" + table(records)
    write_outputs(Path(args.out), {"machine": here, "rows": {r: ROWS[r][0] for r in ROWS}, "runs": records}, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

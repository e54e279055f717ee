"""What ``schedule: auto`` saves against the fixed schedules it replaced, read from kept records.

Pairs every PerPEFT-code run of the accuracy benchmark (``results/accuracy_runs/``, the default
``schedule: auto``) with the run of the same dataset, row and seed under the earlier fixed
schedule (``results/accuracy_runs_earlier/fixed_schedule_380cb61/``: scientific 20 epochs with 5
global, ml-100k 80 with 50, mmdemo 12 with 4, all at batch 64; the default batch is 256 since
a3c1f08, so on scientific and ml-100k the savings are the schedule's and the batch's together,
mmdemo keeps 64), and reports epochs trained, training seconds
(the sum of the epochs' training time: evaluation excluded) and validation / test NDCG@20 of
both. Runs nothing::

    python benchmarks/schedule_savings.py

Writes benchmarks/results/schedule_savings.{json,md}. Seconds of two runs compare only when both
ran on the same machine under the same load: the records name their machine; epochs trained
compare everywhere.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    content_train_seconds,
    id_check_train_seconds,
    machine,
    markdown_table,
    write_outputs,
)

RESULTS = Path(__file__).resolve().parent / "results"
AUTO_RUNS = RESULTS / "accuracy_runs"
FIXED_RUNS = RESULTS / "accuracy_runs_earlier" / "fixed_schedule_380cb61"


def _records(folder: Path) -> dict[str, dict]:
    return {file.name: json.loads(file.read_text()) for file in sorted(folder.glob("*.json"))}


def _content_schedule(record: dict) -> dict:
    return record["id_check"]["content"]["schedule"] if "id_check" in record else record["schedule"]


def _content_epochs(record: dict) -> int:
    if "id_check" in record:
        return int(record["id_check"]["content"]["epochs_run"])
    return len(record["train_epoch_seconds"])


def pairs(auto_runs: Path = AUTO_RUNS, fixed_runs: Path = FIXED_RUNS) -> list[dict]:
    """One entry per auto run that has a fixed-schedule twin."""
    fixed = _records(fixed_runs)
    rows = []
    for name, auto in _records(auto_runs).items():
        if "schedule" not in auto or name not in fixed:
            continue
        before = fixed[name]
        dataset, row, seed = name[: -len(".json")].split("__")
        schedule = _content_schedule(auto)
        rows.append({
            "dataset": dataset, "row": row, "seed": int(seed),
            "epochs_auto": _content_epochs(auto), "epochs_fixed": len(before["train_epoch_seconds"]),
            "grouped_at": [g["epoch"] for g in schedule.get("grouped", [])],
            "train_seconds_auto": content_train_seconds(auto), "train_seconds_fixed": content_train_seconds(before),
            "train_seconds_id_check": id_check_train_seconds(auto),
            "valid_auto": auto["best_valid_score"], "valid_fixed": before["best_valid_score"],
            "test_auto": auto["test_result"]["ndcg@20"], "test_fixed": before["test_result"]["ndcg@20"],
        })
    return rows


def table(rows: list[dict]) -> str:
    lines = [["dataset", "row", "seed", "epochs auto / fixed", "grouped at", "train s auto / fixed",
              "+ ID-only check", "valid NDCG@20 auto / fixed", "test NDCG@20 auto / fixed"]]
    for r in rows:
        with_check = r["train_seconds_auto"] + r.get("train_seconds_id_check", 0.0)
        lines.append([r["dataset"], r["row"], str(r["seed"]), f"{r['epochs_auto']} / {r['epochs_fixed']}",
                      ", ".join(map(str, r["grouped_at"])) or "-",
                      f"{r['train_seconds_auto']:.0f} / {r['train_seconds_fixed']:.0f} "
                      f"({r['train_seconds_auto'] / max(r['train_seconds_fixed'], 1e-9):.2f}x)",
                      f"{with_check:.0f} ({with_check / max(r['train_seconds_fixed'], 1e-9):.2f}x)"
                      if r.get("train_seconds_id_check") else "-",
                      f"{r['valid_auto']:.4f} / {r['valid_fixed']:.4f}",
                      f"{r['test_auto']:.4f} / {r['test_fixed']:.4f}"])
    summary = []
    for dataset in sorted({r["dataset"] for r in rows}):
        for row in sorted({r["row"] for r in rows if r["dataset"] == dataset}):
            group = [r for r in rows if r["dataset"] == dataset and r["row"] == row]
            epochs = statistics.mean(r["epochs_auto"] / r["epochs_fixed"] for r in group)
            seconds = statistics.mean(r["train_seconds_auto"] / r["train_seconds_fixed"] for r in group)
            checked = statistics.mean((r["train_seconds_auto"] + r.get("train_seconds_id_check", 0.0))
                                      / r["train_seconds_fixed"] for r in group)
            summary.append([dataset, row, str(len(group)), f"{epochs:.2f}", f"{seconds:.2f}", f"{checked:.2f}"])
    return (markdown_table(lines[0], lines[1:]) + "\nMean ratios, auto / fixed:\n\n"
            + markdown_table(["dataset", "row", "seeds", "epochs", "training seconds",
                              "training seconds with the ID-only check"], summary))


def main() -> None:
    rows = pairs()
    text = "## schedule: auto against the fixed schedules (kept records)\n\n" + table(rows) + "\n"
    write_outputs(RESULTS / "schedule_savings", {"machine": machine(), "pairs": rows}, text)


if __name__ == "__main__":
    main()

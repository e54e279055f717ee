"""Mixed precision vs float32: the same PerPEFT runs with ``mixed_precision`` off and on.

For each seed, one run per precision (alternating, each in its own process): test and best
validation NDCG@20, mean seconds per training epoch, evaluation seconds. A lower precision is
"within noise" when its mean differs from float32's by less than the seed-to-seed spread.

    python benchmarks/mixed_precision.py                      # mmdemo, LoRA, bf16 vs fp32, 3 seeds
    python benchmarks/mixed_precision.py --seeds 2020 2021 --epochs 6 --warmup_epochs 2
    python benchmarks/mixed_precision.py --precisions no fp16 --seeds 2020 --peft_type ia3

bf16 runs on CPUs too (autocast on the CPU); on a CPU with bf16 matrix units (AVX512-BF16/AMX)
it is also faster. Writes benchmarks/results/mixed_precision.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, markdown_table, mean_std, run_cli, scratch_folder, write_outputs  # noqa: E402

LABELS = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mmdemo")
    parser.add_argument("--peft_type", default="lora")
    parser.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=sorted(LABELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--epochs", type=int, default=None, help="default: the dataset's")
    parser.add_argument("--warmup_epochs", type=int, default=None, help="default: the dataset's")
    parser.add_argument("--extra", nargs="*", default=[], help="more KEY=VALUE for every run (no leading dashes)")
    parser.add_argument("--quick", action="store_true", help="toy size: 2 epochs of a small generated dataset")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mixed_precision"))
    args = parser.parse_args()
    workdir = scratch_folder("bench-precision-")
    common = [f"--peft_type={args.peft_type}", f"--cache_dir={workdir / 'cache'}", "--plots=False",
              "--use_gpu=True", *(f"--{flag.lstrip('-')}" for flag in args.extra)]
    common += [f"--{key}={value}" for key in ("epochs", "warmup_epochs") if (value := getattr(args, key)) is not None]
    dataset = args.dataset
    if args.quick:
        from recbole_perpeft.data.mmdemo import generate_mmdemo

        generate_mmdemo(workdir / "data" / "mmquick", n_users=150, n_items=160, max_len=12)
        dataset, args.seeds = "mmquick", args.seeds[:1]
        common += [f"--data_path={workdir / 'data'}", "--foundation_model=tiny-clip", "--epochs=2",
                   "--warmup_epochs=1", "--n_groups=2"]
    runs = []
    for seed in args.seeds:
        for precision in args.precisions:  # alternating: every precision sees the same load
            print(f"[run] seed {seed}, mixed_precision={precision}", flush=True)
            record = run_cli(["--model=PerPEFT", f"--dataset={dataset}", f"--seed={seed}",
                              f"--mixed_precision={precision}", *common], workdir=workdir / f"{seed}-{precision}")
            runs.append({"seed": seed, "precision": LABELS[precision], "device": record["device"],
                         "test_ndcg@20": record["test_result"]["ndcg@20"],
                         "valid_ndcg@20": record["best_valid_result"]["ndcg@20"],
                         "epoch_s": statistics.mean(record["train_epoch_seconds"]),
                         "eval_s": record["eval_seconds"], "wall_s": record["wall_seconds"]})
    summary = {}
    for precision in args.precisions:
        label = LABELS[precision]
        mine = [r for r in runs if r["precision"] == label]
        summary[label] = {key: [r[key] for r in mine] for key in ("test_ndcg@20", "valid_ndcg@20", "epoch_s", "eval_s")}
    base = summary["fp32"] if "fp32" in summary else None
    info = machine()
    load = [round(x, 2) for x in os.getloadavg()]
    where = info.get("gpu", f"{info['device']}, {info['cpu_count']} cores")
    text = (f"### Mixed precision vs fp32 ({dataset}, {args.peft_type}, seeds {', '.join(map(str, args.seeds))}; "
            f"{where}; load average at the end {load})\n\n")
    rows = []
    for label, s in summary.items():
        speed = statistics.mean(base["epoch_s"]) / statistics.mean(s["epoch_s"]) if base else None
        rows.append([label, mean_std(s["test_ndcg@20"]), mean_std(s["valid_ndcg@20"]),
                     statistics.mean(s["epoch_s"]), f"{speed:.2f}x" if speed else "-", statistics.mean(s["eval_s"])])
    text += markdown_table(["precision", "test NDCG@20", "best valid NDCG@20", "epoch s", "epoch speed-up vs fp32",
                            "test eval s"], rows)
    write_outputs(Path(args.out), {"machine": info, "load_average_at_end": load, "settings": vars(args),
                                   "runs": runs, "summary": summary}, text)


if __name__ == "__main__":
    main()

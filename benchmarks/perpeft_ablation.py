"""PerPEFT ablation on mmdemo: n_groups, group negatives, PEFT backend, over seeds.

Each run goes through the CLI in a clean process with the dataset's defaults
(properties/dataset/mmdemo.yaml) and the same epochs; the table gives mean ± std over seeds
of test NDCG@20 / Hit@20 and the seconds of a global (warm-up) and a personalised epoch.

    python benchmarks/perpeft_ablation.py                       # n_groups 1 vs 4, LoRA, 3 seeds
    python benchmarks/perpeft_ablation.py --groups 1 2 4 8 --backends lora ia3 iisan --negatives on off
    python benchmarks/perpeft_ablation.py --quick               # toy smoke run
Writes benchmarks/results/perpeft_ablation.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, markdown_table, mean_std, run_cli, scratch_folder, write_outputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mmdemo")
    parser.add_argument("--groups", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--backends", nargs="+", default=["lora"])
    parser.add_argument("--negatives", nargs="+", default=["on"], choices=["on", "off"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--extra", nargs="*", default=[], help="more --KEY=VALUE for every run")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "perpeft_ablation"))
    args = parser.parse_args()
    workdir = scratch_folder("bench-ablation-")
    extra = list(args.extra)
    if args.quick:
        from recbole_perpeft.data.mmdemo import generate_mmdemo

        generate_mmdemo(workdir / "data" / "mmquick", n_users=200, n_items=200)
        args.dataset, args.seeds = "mmquick", args.seeds[:1]
        extra += [f"--data_path={workdir / 'data'}", "--foundation_model=tiny-clip", "--epochs=2",
                  "--warmup_epochs=1", "--train_batch_size=64"]
    runs = []
    for groups, backend, negatives, seed in itertools.product(args.groups, args.backends, args.negatives, args.seeds):
        if groups == 1 and negatives == "off" and "on" in args.negatives:
            continue  # group negatives only act once users are grouped
        print(f"[run] n_groups={groups} peft={backend} group_negatives={negatives} seed={seed}", flush=True)
        record = run_cli(
            ["--model=PerPEFT", f"--dataset={args.dataset}", f"--n_groups={groups}", f"--peft_type={backend}",
             f"--group_negatives={negatives == 'on'}", f"--seed={seed}", f"--cache_dir={workdir / 'cache'}",
             *extra],
            workdir=workdir / f"g{groups}-{backend}-{negatives}-{seed}",
        )
        seconds = record["train_epoch_seconds"]
        warmup = record["grouping_log"][0]["epoch"] if record.get("grouping_log") else len(seconds)
        runs.append({"n_groups": groups, "peft_type": backend, "group_negatives": negatives == "on", "seed": seed,
                     "global_epoch_seconds": statistics.mean(seconds[:warmup]) if warmup else None,
                     "personalised_epoch_seconds": statistics.mean(seconds[warmup:]) if seconds[warmup:] else None,
                     "record": record})
    rows = []
    for (groups, backend, negatives), group in itertools.groupby(
        runs, key=lambda r: (r["n_groups"], r["peft_type"], r["group_negatives"])
    ):
        group = list(group)
        tests = [r["record"]["test_result"] for r in group]
        glob = [r["global_epoch_seconds"] for r in group if r["global_epoch_seconds"]]
        pers = [r["personalised_epoch_seconds"] for r in group if r["personalised_epoch_seconds"]]
        ratio = statistics.mean(pers) / statistics.mean(glob) if glob and pers else None
        rows.append([groups, backend, "on" if negatives else "off", len(group),
                     mean_std([t["ndcg@20"] for t in tests]), mean_std([t["hit@20"] for t in tests]),
                     statistics.mean(glob) if glob else "-", statistics.mean(pers) if pers else "-",
                     f"{ratio:.2f}" if ratio else "-", group[0]["record"]["params"]["trainable"]])
    table = f"### PerPEFT ablation on {args.dataset} ({machine()['device']}, {machine()['cpu_count']} CPUs)\n\n"
    table += markdown_table(
        ["n_groups", "PEFT", "group negatives", "seeds", "test NDCG@20", "test Hit@20", "global epoch s",
         "personalised epoch s", "ratio", "trainable params"], rows)
    write_outputs(Path(args.out), {"machine": machine(), "settings": vars(args), "runs": runs}, table)


if __name__ == "__main__":
    main()

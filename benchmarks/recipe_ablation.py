"""How the default training recipe was chosen: the paper's recipe, then one change at a time.

Global PEFT (``--n_groups=1``, IISAN: cheap epochs on cached states) on each dataset, one seed,
the same epochs for every step; model selection and the choice of each change on **validation**
NDCG@20 (the test column is reported, never used to choose). Steps, cumulative:

0. ``recipe: paper`` — BCE with one negative per position, content weight 0.5, one sample per
   user (the last window), lr 1e-4, weight decay 1e-4, batch 16;
1. sampled softmax (the step's items + 256 shared negatives), batch 64, the dataset's lr, no decay;
2. content weight 0.1 (the content term on the scale of the ID embeddings);
3. ``train_unit: window`` (every training interaction a target once an epoch);
4. 1024 shared negatives = the default recipe.

    python benchmarks/recipe_ablation.py                       # mmdemo, ml-100k, scientific
    python benchmarks/recipe_ablation.py --datasets mmdemo --quick

Writes benchmarks/results/recipe_ablation.{json,md}; runs are kept under --runs and not repeated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.accuracy import DEFAULT_SCIENTIFIC_RAW, TEXT, prepare_scientific  # noqa: E402
from benchmarks.common import machine, markdown_table, run_cli, scratch_folder, write_outputs  # noqa: E402

STEPS: list[tuple[str, list[str]]] = [
    ("recipe: paper", ["--recipe=paper"]),
    ("+ sampled softmax, batch 64, dataset lr", ["--loss_type=sampled_softmax", "--num_negatives=256",
                                                 "--content_weight=0.5", "--train_unit=user"]),
    ("+ content weight 0.1", ["--num_negatives=256", "--train_unit=user"]),
    ("+ window training unit", ["--num_negatives=256"]),
    ("+ 1024 shared negatives (default)", []),
]
DATASETS: dict[str, list[str]] = {
    "mmdemo": ["--epochs=12"],
    "ml-100k": [*TEXT, "--epochs=30"],
    "scientific": [*TEXT, "--epochs=15"],
}
# the learning rate each dataset trains with under the default recipe (mmdemo.yaml sets 1e-3)
DATASET_LR = {"mmdemo": "1e-3", "ml-100k": "3e-4", "scientific": "3e-4"}


def step_flags(index: int, dataset: str) -> list[str]:
    _, flags = STEPS[index]
    if index == 0:
        return flags
    return [*flags, "--train_batch_size=64", f"--learning_rate={DATASET_LR[dataset]}", "--weight_decay=0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--peft_type", default="iisan")
    parser.add_argument("--quick", action="store_true", help="toy data, two epochs")
    parser.add_argument("--runs", default=str(Path(__file__).parent / "results" / "recipe_ablation_runs"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "recipe_ablation"))
    parser.add_argument("--scientific_raw", default=str(DEFAULT_SCIENTIFIC_RAW))
    parser.add_argument("--data_path", default=None, help="where scientific is converted")
    args = parser.parse_args()
    workdir = scratch_folder("bench-recipe-")
    from recbole_perpeft.cache import perpeft_home

    data_path = Path(args.data_path) if args.data_path else perpeft_home() / "datasets"
    shared: dict[str, list[str]] = {name: [f"--dataset={name}", *flags] for name, flags in DATASETS.items()}
    if args.quick:
        from recbole_perpeft.data.mmdemo import generate_mmdemo

        generate_mmdemo(workdir / "data" / "mmquick", n_users=150, n_items=160, max_len=12)
        shared = {"mmdemo": ["--dataset=mmquick", f"--data_path={workdir / 'data'}", "--foundation_model=tiny-clip",
                             "--epochs=2"]}
        args.datasets = ["mmdemo"]
    elif "scientific" in args.datasets:
        prepare_scientific(Path(args.scientific_raw), data_path, 1000)
        shared["scientific"].append(f"--data_path={data_path}")
    runs_dir = Path(args.runs)
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for dataset in args.datasets:
        for index, (label, _) in enumerate(STEPS):
            flags = [*shared[dataset], "--model=PerPEFT", "--n_groups=1", f"--peft_type={args.peft_type}",
                     f"--seed={args.seed}", "--plots=False", *step_flags(index, dataset)]
            file = runs_dir / f"{dataset}__step{index}__{args.peft_type}__{args.seed}.json"
            if file.is_file() and not args.quick:
                record = json.loads(file.read_text())
            else:
                print(f"{dataset}: {label}", flush=True)
                record = run_cli(flags, workdir=workdir / f"{dataset}-{index}", timeout=6 * 3600)
                record["flags"] = flags
                if not args.quick:
                    file.write_text(json.dumps(record, indent=1) + "\n")
            best_epoch = max(record["valid_scores"], key=lambda pair: pair[1])[0] if record["valid_scores"] else None
            seconds = record["train_epoch_seconds"]
            results.append({"dataset": dataset, "step": label, "flags": flags,
                            "valid_ndcg@20": record["best_valid_result"]["ndcg@20"],
                            "test_ndcg@20": record["test_result"]["ndcg@20"], "best_epoch": best_epoch,
                            "epochs": len(record["train_loss"]),
                            "epoch_seconds": sum(seconds) / max(len(seconds), 1)})
    rows = [[r["dataset"], r["step"], f"{r['valid_ndcg@20']:.4f}", f"{r['test_ndcg@20']:.4f}",
             f"{r['best_epoch']}/{r['epochs']}", f"{r['epoch_seconds']:.1f}"] for r in results]
    text = (f"## Recipe ablation (global PEFT, {args.peft_type}, seed {args.seed}; {machine()['device']})\n\n"
            + markdown_table(["dataset", "recipe step (cumulative)", "valid NDCG@20", "test NDCG@20",
                              "best epoch", "s / epoch"], rows))
    write_outputs(Path(args.out), {"machine": machine(), "seed": args.seed, "peft_type": args.peft_type,
                                   "results": results}, text)


if __name__ == "__main__":
    main()

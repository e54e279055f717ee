"""Accuracy benchmark: RecBole's sequential baselines vs global PEFT vs PerPEFT, same protocol.

Every run goes through the CLI in its own process with the dataset's defaults and the plugin's
evaluation protocol (properties/overall.yaml: leave-one-out by time, full ranking, history
excluded, NDCG and Hit at 10/20/30, model selection on validation NDCG@20), so the numbers of
all models of a dataset are comparable. Rows: SASRec, GRU4Rec, BERT4Rec, and for each PEFT
backend the global model (``--n_groups=1``) and PerPEFT (the dataset's ``n_groups``).

    python benchmarks/accuracy.py                                  # every setting, 3 seeds
    python benchmarks/accuracy.py --datasets mmdemo --backends lora
    python benchmarks/accuracy.py --report                         # tables from the kept runs
    OMP_NUM_THREADS=1 python benchmarks/accuracy.py --jobs 2       # two runs at a time
    python benchmarks/accuracy.py --quick                          # toy smoke run

Each run's record is kept under ``--runs`` (default benchmarks/results/accuracy_runs/) and a run
already there is not repeated, so an interrupted benchmark continues where it stopped. Writes
benchmarks/results/accuracy.{json,md}.

Settings (``SETTINGS`` below; ``--datasets`` picks them): ``mmdemo`` uses
properties/dataset/mmdemo.yaml (tiny CLIP, 12 epochs, 4 warm-up, 4 groups, batch 64, lr 1e-3) for
every model. ``ml-100k`` is text-only with the offline all-MiniLM-L6-v2 encoder and a short
budget, 4 epochs: LoRA and (IA)3 backpropagate through MiniLM for the ~1,000 titles of every batch,
about 12 s per batch of 64 users on one CPU thread, ~3 minutes an epoch. ``ml-100k-40ep`` gives
IISAN (whose epochs cost ~1 s on cached hidden states) a 40-epoch schedule, 10 of them global;
``mmdemo-60ep`` likewise 60 epochs, 20 global.

``--report`` runs nothing: it rebuilds the tables from the records already kept and lists the
planned runs that have none yet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, markdown_table, run_cli, write_outputs  # noqa: E402

BASELINES = ("SASRec", "GRU4Rec", "BERT4Rec")
BACKENDS = ("lora", "ia3", "iisan")
METRICS = ("ndcg@10", "ndcg@20", "ndcg@30", "hit@10", "hit@20", "hit@30")
ML100K = ["--foundation_model=all-MiniLM-L6-v2", "--n_groups=4", "--train_batch_size=64", "--learning_rate=1e-3",
          "--weight_decay=0.0"]
# A setting is a dataset with the flags every model gets on it; ``models``/``backends`` restrict the
# rows where the others would not fit the machine's time (the table then has only those rows).
SETTINGS: dict[str, dict] = {
    "mmdemo": {"dataset": "mmdemo", "args": []},
    "ml-100k": {"dataset": "ml-100k", "args": [*ML100K, "--epochs=4", "--warmup_epochs=2"]},
    # IISAN's epochs cost ~1 s here (cached hidden states), LoRA's and (IA)3's ~3 minutes on a
    # 2-core CPU (backpropagation through MiniLM), so only IISAN gets a longer schedule on a CPU.
    "ml-100k-40ep": {"dataset": "ml-100k", "args": [*ML100K, "--epochs=40", "--warmup_epochs=10"],
                     "models": ["PerPEFT"], "backends": ["iisan"]},
    # mmdemo's 12 epochs keep the README's main job to minutes; IISAN's validation NDCG@20 still
    # rises at 60 (0.026 after 12 epochs, 0.075 after 60, global model, seed 2020).
    "mmdemo-60ep": {"dataset": "mmdemo", "args": ["--epochs=60", "--warmup_epochs=20"],
                    "models": ["PerPEFT"], "backends": ["iisan"]},
}
DEFAULT_SETTINGS = ["mmdemo", "mmdemo-60ep", "ml-100k", "ml-100k-40ep"]


# Every model sees the same window of history: the last 10 items (PerPEFT's default, the
# reference's; RecBole's models default to 50). RecBole's baselines train on one sample per prefix
# of a history (~22k on mmdemo, ~97k on ml-100k), PerPEFT on one sample per user with a loss at
# each position of its window (~600 targets in a batch of 64 users); 512 prefixes per baseline
# batch keeps the targets per step comparable.
BASELINE_ARGS = ["--train_batch_size=512", "--MAX_ITEM_LIST_LENGTH=10"]


def planned_runs(settings, models, backends, seeds) -> list[dict]:
    runs = []
    for setting in settings:
        spec = SETTINGS[setting]
        for seed in seeds:
            for model in [m for m in models if m in spec.get("models", models)]:
                common = {"dataset": setting, "seed": seed, "shared": [f"--dataset={spec['dataset']}", *spec["args"]]}
                if model in BASELINES:
                    runs.append({**common, "row": model, "args": [f"--model={model}", *BASELINE_ARGS]})
                    continue
                for backend in [b for b in backends if b in spec.get("backends", backends)]:
                    for row, groups in (("global PEFT", ["--n_groups=1"]), ("PerPEFT", [])):
                        runs.append({**common, "row": f"{row} ({backend})",
                                     "args": ["--model=PerPEFT", f"--peft_type={backend}", *groups]})
    return runs


def merged_flags(own: list[str], *shared: str) -> list[str]:
    """``shared`` then ``own`` --KEY=VALUE flags, a key of ``own`` replacing the shared one
    (a global-PEFT row's --n_groups=1 over the dataset's groups)."""
    own_keys = {flag.split("=", 1)[0] for flag in own}
    return [flag for flag in shared if flag.split("=", 1)[0] not in own_keys] + own


def run_name(run: dict) -> str:
    safe = run["row"].replace(" ", "_").replace("(", "").replace(")", "")
    return f"{run['dataset']}__{safe}__{run['seed']}"


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(records: list[dict]) -> str:
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        rows = []
        for row in dict.fromkeys(r["row"] for r in records if r["dataset"] == dataset):
            tests = [r["record"]["test_result"] for r in records if r["dataset"] == dataset and r["row"] == row]
            rows.append([row, len(tests), *(mean_std([t[m] for t in tests]) for m in METRICS)])
        spec = SETTINGS[dataset]
        settings = (" ".join(spec["args"]) or f"{spec['dataset']}'s defaults") + \
            f"; baselines {' '.join(BASELINE_ARGS)}"
        out.append(f"### {dataset} (test, mean ± std over seeds; --dataset={spec['dataset']} {settings})\n\n"
                   + markdown_table(["model", "seeds", *(m.upper() for m in METRICS)], rows))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS),
                        help="benchmark settings: a dataset and the flags every model gets on it")
    parser.add_argument("--models", nargs="+", default=[*BASELINES, "PerPEFT"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--extra", nargs="*", default=[], help="more --KEY=VALUE for every run")
    parser.add_argument("--quick", action="store_true", help="toy data, one seed, two epochs")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each its own process)")
    parser.add_argument("--report", action="store_true", help="run nothing; tables from the kept records")
    parser.add_argument("--runs", default=str(Path(__file__).parent / "results" / "accuracy_runs"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-accuracy-"))
    extra = list(args.extra)
    if args.quick:
        from recbole_perpeft.data.mmdemo import generate_mmdemo

        generate_mmdemo(workdir / "data" / "mmquick", n_users=150, n_items=160, max_len=12)
        SETTINGS["mmquick"] = {"dataset": "mmquick", "args": ["--foundation_model=tiny-clip", "--epochs=2",
                                                              "--warmup_epochs=1", "--n_groups=2",
                                                              "--train_batch_size=64"]}
        args.datasets, args.seeds = ["mmquick"], args.seeds[:1]
        extra.append(f"--data_path={workdir / 'data'}")
    runs_dir = Path(args.runs)
    runs_dir.mkdir(parents=True, exist_ok=True)
    plan = planned_runs(args.datasets, args.models, args.backends, args.seeds)

    def record_of(index: int, run: dict) -> dict | None:
        file = runs_dir / f"{run_name(run)}.json"
        label = f"[{index}/{len(plan)}] {run['dataset']} {run['row']} seed={run['seed']}"
        if file.is_file():
            print(f"{label}: done before", flush=True)
            return json.loads(file.read_text())
        if args.report:
            print(f"{label}: not run yet", flush=True)
            return None
        print(label, flush=True)
        record = run_cli(merged_flags(run["args"], *run["shared"], f"--seed={run['seed']}",
                                      f"--cache_dir={workdir / 'cache'}", "--plots=False", *extra),
                         workdir=workdir / run_name(run))
        file.write_text(json.dumps(record, indent=1) + "\n")
        return record

    # each run is its own process; --jobs > 1 runs that many at once (set OMP_NUM_THREADS so
    # that jobs x threads does not exceed the cores)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        found = list(pool.map(record_of, range(1, len(plan) + 1), plan))
    records = [{**{k: run[k] for k in ("dataset", "row", "seed")}, "record": record}
               for run, record in zip(plan, found) if record is not None]
    text = f"## Accuracy ({machine()['device']}, {machine()['cpu_count']} CPUs)\n\n" + table(records)
    settings = {**vars(args), "settings": {name: SETTINGS[name] for name in args.datasets},
                "baseline_args": BASELINE_ARGS}
    write_outputs(Path(args.out), {"machine": machine(), "settings": settings, "runs": records}, text)


if __name__ == "__main__":
    main()

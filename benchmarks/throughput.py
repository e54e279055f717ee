"""Throughput before vs after: the same measurements on a baseline commit's code and on this tree.

The baseline is a git commit of this repository (default: the one before the throughput work);
its files are exported with ``git archive`` into a temporary folder, and every measurement runs
once per variant in a fresh process, the variants alternating, so both see the same machine load.
Reported: each variant's times, and the ratio baseline / ours.

Parts (``--parts``, all by default):

* ``catalogue``: ml-100k's 1,682 movie titles through the offline all-MiniLM-L6-v2: building
  IISAN's frozen-state cache, and one evaluation table (``encode_all`` of a LoRA backend, one
  group, batch 256); the outputs of both variants are compared (maximum absolute difference).
* ``steps``: one training epoch of PerPEFT with LoRA on ml-100k (MiniLM, batch 64, one group):
  seconds, steps, and items through the encoder per step, for the baseline's BCE and this tree's
  BCE and sampled softmax (loss and negatives as configured).
* ``ml100k``: whole runs of the accuracy benchmark's ml-100k LoRA setting (4 groups, batch 64,
  lr 1e-3, ``--epochs`` epochs): the baseline as it was (BCE) against this tree under
  ``--recipe_args`` (default: sampled softmax); mean seconds per training epoch and best
  validation NDCG@20.

    python benchmarks/throughput.py                       # every part (about an hour on a 2-core CPU)
    python benchmarks/throughput.py --parts catalogue --repeats 3
    python benchmarks/throughput.py --quick               # toy sizes: a smoke run

Writes benchmarks/results/throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
BASELINE = "f2df5b5"  # main before issue 16: unsorted, untrimmed catalogue passes; BCE
# The accuracy benchmark's ml-100k setting as it was (lr 1e-3, batch 64, 4 groups, 2 global epochs).
ML100K_ARGS = ["--foundation_model=all-MiniLM-L6-v2", "--n_groups=4", "--train_batch_size=64",
               "--learning_rate=1e-3", "--weight_decay=0.0", "--warmup_epochs=2"]
# This tree, under its default recipe (sampled softmax over the batch's items and 1,024 shared
# negatives): with one sample per user (epochs comparable to the baseline's), and whole (window
# unit: every training item a target once an epoch, ~10x the baseline's targets; lr 3e-4).
ML100K_VARIANTS = [["--loss_type=sampled_softmax", "--train_unit=user"],
                   ["--train_unit=window", "--learning_rate=3e-4", "--epochs=2", "--warmup_epochs=1"]]


# -- workers: run inside a fresh process, with the variant's tree first on sys.path -----------------


def _ml100k_titles(limit: int | None) -> list[str]:
    import recbole

    path = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.item"
    lines = path.read_text(encoding="latin-1").splitlines()
    column = next(i for i, name in enumerate(lines[0].split("\t")) if name.startswith("movie_title"))
    titles = [line.split("\t")[column] for line in lines[1:]]
    return titles[:limit] if limit else titles


def worker_catalogue(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from recbole_perpeft.encoders import build_foundation_encoder
    from recbole_perpeft.peft_backends import build_grouped_encoder

    titles = [""] + _ml100k_titles(args.items)  # row 0: padding, as in a dataset
    foundation = build_foundation_encoder("all-MiniLM-L6-v2", seed=0)
    ids, mask = foundation.processor.tokenize(titles)
    has_title = np.array([bool(t) for t in titles])
    content = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
               "has_title": torch.from_numpy(has_title)}
    cache = Path(tempfile.mkdtemp(prefix="throughput-cache-"))
    start = time.perf_counter()
    iisan = build_grouped_encoder(foundation, "iisan", 1, content, "ml-100k-titles", cache_dir=cache,
                                  show_progress=False, peft_config={"verify_cache": False})
    iisan_s = time.perf_counter() - start
    states = iisan.states_text.numpy().astype(np.float32)
    lora = build_grouped_encoder(build_foundation_encoder("all-MiniLM-L6-v2", seed=0), "lora", 1, content,
                                 "ml-100k-titles", show_progress=False, seed=0)
    start = time.perf_counter()
    table = lora.encode_all(0, batch_size=256)
    table_s = time.perf_counter() - start
    np.savez(args.arrays, states=states, table=table.numpy())
    return {"iisan_cache_s": iisan_s, "table_s": table_s, "items": len(titles) - 1,
            "mean_tokens": float(mask[has_title].sum(1).mean()), "max_tokens": int(mask.sum(1).max())}


def worker_steps(args: argparse.Namespace) -> dict:
    import torch
    from recbole.data import data_preparation

    try:
        from recbole_perpeft.run import build_config, create_dataset, seed_everything
    except ImportError:  # a baseline from before the run core moved (issue 14)
        from recbole_perpeft.quick_start import build_config, create_dataset, seed_everything
    from recbole_perpeft.utils import get_model, get_trainer

    settings = {"foundation_model": "all-MiniLM-L6-v2", "n_groups": 1, "train_batch_size": 64,
                "learning_rate": 1e-3, "weight_decay": 0.0, "show_progress": False, "state": "WARNING",
                "checkpoint_dir": tempfile.mkdtemp(prefix="throughput-saved-"),
                "cache_dir": tempfile.mkdtemp(prefix="throughput-cache-"), **json.loads(args.settings)}
    config = build_config("PerPEFT", "ml-100k", None, settings)
    seed_everything(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("PerPEFT")(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], "PerPEFT")(config, model)
    encoder = model.items.encoder
    counted = {"items": 0}
    original = encoder.encode

    def counting(item_ids: torch.Tensor, group: int) -> torch.Tensor:
        counted["items"] += item_ids.numel()
        return original(item_ids, group)

    encoder.encode = counting
    steps = args.steps
    batches = trainer._batches(train_data, 0)[:steps] if steps else trainer._batches(train_data, 0)
    trainer._batches = lambda data, epoch: batches
    start = time.perf_counter()
    trainer._train_epoch(train_data, 0)
    seconds = time.perf_counter() - start
    return {"epoch_s": seconds, "steps": len(batches), "items_per_step": counted["items"] / len(batches),
            "s_per_step": seconds / len(batches)}


def worker_run(args: argparse.Namespace) -> dict:
    """A whole CLI run (training, validation every epoch, test)."""
    out = Path(tempfile.mkdtemp(prefix="throughput-run-")) / "result.json"
    command = [sys.executable, str(Path(args.tree) / "run_recbole_perpeft.py"), "--model=PerPEFT",
               "--dataset=ml-100k", *json.loads(args.settings), f"--result_file={out}", "--show_progress=False",
               "--state=WARNING", "--plots=False", f"--checkpoint_dir={out.parent / 'saved'}"]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=out.parent, capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(completed.stderr[-3000:])
    record = json.loads(out.read_text())
    return {"epoch_s": statistics.mean(record["train_epoch_seconds"]), "epoch_seconds": record["train_epoch_seconds"],
            "best_valid_ndcg@20": record["best_valid_result"]["ndcg@20"],
            "valid_scores": record["valid_scores"], "test_ndcg@20": record["test_result"]["ndcg@20"],
            "wall_s": time.perf_counter() - started}


WORKERS = {"catalogue": worker_catalogue, "steps": worker_steps, "run": worker_run}


# -- driver -------------------------------------------------------------------------------------


def export_tree(ref: str) -> Path:
    """The files of commit ``ref`` in a temporary folder (``git archive``: no worktree metadata)."""
    target = Path(tempfile.mkdtemp(prefix=f"throughput-{ref[:10]}-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def snapshot_tree() -> Path:
    """This tree's files as they are now (tracked and new ones), so edits made while the
    benchmark runs do not reach its later measurements."""
    import shutil

    target = Path(tempfile.mkdtemp(prefix="throughput-ours-"))
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    for name in listed:
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def run_worker(kind: str, tree: Path, **options) -> dict:
    """One measurement in a fresh process with ``tree``'s package first on the path."""
    with tempfile.TemporaryDirectory(prefix="throughput-worker-") as tmp:
        result = Path(tmp) / "result.json"
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        command = [sys.executable, str(HERE), "--worker", kind, "--tree", str(tree), "--result", str(result)]
        for key, value in options.items():
            command += [f"--{key}", str(value)]
        completed = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        if completed.returncode:
            raise RuntimeError(f"{kind} worker on {tree} failed:\n{completed.stderr[-3000:]}")
        return json.loads(result.read_text())


def ratio(baseline: float, ours: float) -> float:
    return baseline / ours if ours else float("nan")


def part_catalogue(trees: dict[str, Path], repeats: int, quick: bool) -> dict:
    import numpy as np

    runs: dict[str, list[dict]] = {name: [] for name in trees}
    arrays = {}
    for _ in range(repeats):
        for name, tree in trees.items():  # alternating: both variants see the same load
            path = Path(tempfile.mkdtemp(prefix="throughput-arrays-")) / f"{name}.npz"
            runs[name].append(run_worker("catalogue", tree, arrays=path, items=64 if quick else 0))
            arrays[name] = dict(np.load(path))
    summary = {name: {key: statistics.median(r[key] for r in rs) for key in ("iisan_cache_s", "table_s")}
               for name, rs in runs.items()}
    diffs = {key: float(np.abs(arrays["baseline"][key] - arrays["ours"][key]).max()) for key in ("states", "table")}
    return {"runs": runs, "median": summary, "max_abs_difference": diffs,
            "speedup": {key: ratio(summary["baseline"][key], summary["ours"][key])
                        for key in ("iisan_cache_s", "table_s")}}


def part_steps(trees: dict[str, Path], repeats: int, quick: bool, ours_settings: list[dict]) -> dict:
    # One sample per user everywhere: the same batches, so the variants differ only in how a step
    # encodes its items and computes its loss.
    user = {"train_unit": "user"}
    variants = {
        "baseline BCE": (trees["baseline"], {"loss_type": "BCE", **user}),
        "ours BCE": (trees["ours"], {"loss_type": "BCE", **user}),
    }
    for settings in ours_settings:
        variants["ours " + " ".join(f"{k}={v}" for k, v in settings.items())] = (trees["ours"], {**user, **settings})
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (tree, settings) in variants.items():
            runs[name].append(run_worker("steps", tree, settings=json.dumps(settings), steps=2 if quick else 0))
    median = {name: {key: statistics.median(r[key] for r in rs) for key in ("epoch_s", "s_per_step", "items_per_step")}
              for name, rs in runs.items()}
    first = median["baseline BCE"]
    speedup = {name: ratio(first["s_per_step"], m["s_per_step"]) for name, m in median.items()}
    return {"runs": runs, "median": median, "speedup_vs_baseline_BCE": speedup}


def best_epoch_score(run: dict) -> float:
    """The highest validation NDCG@20 of a single epoch of ``run``."""
    return max(score for _, score in run["valid_scores"])


def time_to_reach(run: dict, target: float) -> float | None:
    """Training seconds (validation excluded) until the validation NDCG@20 first reached ``target``."""
    elapsed = 0.0
    for seconds, (_, score) in zip(run["epoch_seconds"], run["valid_scores"]):
        elapsed += seconds
        if score >= target:
            return elapsed
    return None


def part_ml100k(trees: dict[str, Path], epochs: int, variants_args: list[list[str]], quick: bool) -> dict:
    from benchmarks.common import last_flag_wins

    base = [*ML100K_ARGS, f"--epochs={epochs}"]
    if quick:
        base = [*base, "--warmup_epochs=1", "--n_groups=2"]
    # The baseline as it was: the paper's BCE (its default then), one sample per user.
    variants = {"baseline": (trees["baseline"], base)}
    for extra in variants_args:
        variants["ours " + " ".join(extra)] = (trees["ours"], last_flag_wins([*base, *extra]))
    runs = {name: run_worker("run", tree, settings=json.dumps(args)) for name, (tree, args) in variants.items()}
    return compare_runs(runs, {name: args for name, (_, args) in variants.items()})


def compare_runs(runs: dict[str, dict], args: dict[str, list[str]]) -> dict:
    """Each run's epoch speed-up over ``runs['baseline']`` and its time to the baseline's best epoch."""
    before = runs["baseline"]
    # The best validation of any one epoch: with per-group model selection the served model's
    # score (best_valid_ndcg@20) combines several epochs and no single epoch reaches it.
    target = best_epoch_score(before)
    baseline_time = time_to_reach(before, target)
    for run in runs.values():
        run["seconds_to_baseline_best"] = time_to_reach(run, target)
        reached = run["seconds_to_baseline_best"]
        run["time_to_quality_speedup"] = baseline_time / reached if reached else None
        run["epoch_speedup"] = ratio(before["epoch_s"], run["epoch_s"])
    return {"runs": runs, "args": args, "baseline_best_epoch_valid_ndcg@20": target}


def describe(info: dict) -> str:
    return info.get("gpu") or f"{info['device']}, {info['cpu_count']} cores, torch {info['torch']}"


def markdown(report: dict) -> str:
    load = report["load"]
    lines = [f"# Throughput: baseline {report['baseline']} vs this tree\n",
             f"Machine: {describe(report['machine'])}, one torch thread per process; load average (1, 5, 15 min) "
             f"at start {load['start']}, at end {load['end']}: other processes shared the CPU, and the variants "
             "alternate, so they saw the same load.\n"]
    if "catalogue" in report:
        c = report["catalogue"]
        lines += ["## Catalogue encoding, ml-100k titles, all-MiniLM-L6-v2 (median seconds)\n",
                  "| pass | baseline s | ours s | speed-up | max abs difference |", "|---|---|---|---|---|",
                  f"| IISAN state cache build | {c['median']['baseline']['iisan_cache_s']:.2f} | "
                  f"{c['median']['ours']['iisan_cache_s']:.2f} | {c['speedup']['iisan_cache_s']:.2f}x | "
                  f"{c['max_abs_difference']['states']:.2g} (float16 cache) |",
                  f"| evaluation table (LoRA, one group) | {c['median']['baseline']['table_s']:.2f} | "
                  f"{c['median']['ours']['table_s']:.2f} | {c['speedup']['table_s']:.2f}x | "
                  f"{c['max_abs_difference']['table']:.2g} |", ""]
    if "steps" in report:
        s = report["steps"]
        lines += ["## One training epoch, ml-100k, LoRA through MiniLM, batch 64, one group (median)\n",
                  "| variant | epoch s | s / step | items encoded / step | speed-up per step |",
                  "|---|---|---|---|---|"]
        for name, m in s["median"].items():
            lines.append(f"| {name} | {m['epoch_s']:.1f} | {m['s_per_step']:.2f} | {m['items_per_step']:.0f} | "
                         f"{s['speedup_vs_baseline_BCE'][name]:.2f}x |")
        lines.append("")
    if "ml100k" in report:
        m = report["ml100k"]
        lines += ["## Whole runs, ml-100k LoRA through MiniLM (4 groups, batch 64, 2 global epochs)\n",
                  "| variant | s / training epoch | epoch speed-up | best epoch's valid NDCG@20 | served valid NDCG@20 "
                  "| training s to the baseline's best epoch | speed-up to that quality | test NDCG@20 |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, run in m["runs"].items():
            reached = run["seconds_to_baseline_best"]
            speed = run["time_to_quality_speedup"]
            lines.append(f"| {name} | {run['epoch_s']:.1f} | {run['epoch_speedup']:.2f}x | "
                         f"{best_epoch_score(run):.4f} | {run['best_valid_ndcg@20']:.4f} | "
                         f"{f'{reached:.0f}' if reached else 'not reached'} | "
                         f"{f'{speed:.2f}x' if speed else '-'} | {run['test_ndcg@20']:.4f} |")
        lines += ["", "Flags: " + "; ".join(f"{name}: `{' '.join(args)}`" for name, args in m["args"].items()), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["catalogue", "steps", "ml100k"],
                        choices=["catalogue", "steps", "ml100k"])
    parser.add_argument("--baseline", default=BASELINE, help="git commit measured as 'before'")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="ml100k part: epochs per run")
    parser.add_argument("--ours", default='[{"loss_type": "sampled_softmax"}, '
                        '{"loss_type": "sampled_softmax", "mixed_precision": "bf16"}]',
                        help="steps part: settings (a JSON list) of this tree's further variants")
    parser.add_argument("--variants", default=json.dumps(ML100K_VARIANTS),
                        help="ml100k part: a JSON list of this tree's flag lists, each on top of the shared ones")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "throughput"))
    # worker mode (internal)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--arrays", help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, args.tree)
        Path(args.result).write_text(json.dumps(WORKERS[args.worker](args)))
        return

    sys.path.insert(0, str(REPO))
    from benchmarks.common import machine, scratch_folder, write_outputs

    # Every temporary folder of this run and of its workers (trees, caches, runs) goes under one
    # scratch folder, removed at the end.
    scratch = scratch_folder("throughput-")
    os.environ["TMPDIR"] = tempfile.tempdir = str(scratch)
    trees = {"baseline": export_tree(args.baseline), "ours": snapshot_tree()}
    report: dict = {"baseline": args.baseline, "machine": machine(), "settings": vars(args),
                    "load": {"start": [round(x, 2) for x in os.getloadavg()]}}
    if args.quick:
        args.repeats, args.epochs = 1, 2
    if "catalogue" in args.parts:
        report["catalogue"] = part_catalogue(trees, args.repeats, args.quick)
    if "steps" in args.parts:
        report["steps"] = part_steps(trees, args.repeats, args.quick, json.loads(args.ours))
    if "ml100k" in args.parts:
        report["ml100k"] = part_ml100k(trees, args.epochs, json.loads(args.variants), args.quick)
    report["load"]["end"] = [round(x, 2) for x in os.getloadavg()]
    write_outputs(Path(args.out), report, markdown(report))


if __name__ == "__main__":
    main()

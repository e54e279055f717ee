"""Efficiency benchmark: time, memory and parameters per PEFT backend, n_groups and catalogue size.

Part 1 (backends x groups): PerPEFT on mmdemo for each backend (``lora``, ``ia3``, ``iisan``,
``none`` = frozen foundation model) and ``n_groups`` in {1, 2, 4, 8}: seconds per global epoch
and per personalised epoch (and their ratio), test-evaluation seconds, the whole run's seconds
(set-up included: content and IISAN hidden-state caches, grouping), peak memory (RSS on CPU,
``torch.cuda.max_memory_allocated`` on CUDA), trainable parameters, PEFT parameters per group,
and IISAN's TPME (0.45 * time + 0.1 * trainable parameters + 0.45 * memory, each min-max
normalised over the backends compared at the smallest ``n_groups``, 1 by default; lower is better).

Part 2 (catalogue size): epoch time and memory of the global model for generated mmdemo variants
with 1k, 4k and 16k items (users scale with the items, 5 interactions per item on average).

Every run is its own process (clean peak-memory figures). Time is measured, not accuracy: a few
epochs suffice (default 3: 1 global + 2 personalised).

    python benchmarks/efficiency.py
    python benchmarks/efficiency.py --foundation_model=clip-vit-base-patch32-random \
        --items 64 --groups 1 4 --catalogue --epochs 3 --out benchmarks/results/efficiency_vitb32
    python benchmarks/efficiency.py --quick                                           # toy smoke run
On a GPU machine the same command runs on CUDA (``use_gpu`` is on by default) and records the
device. Writes benchmarks/results/efficiency.{json,md}.

Part 3 (``--parts paper``; what ``--device cuda`` runs by default): the paper's scale. Full-size
CLIP ViT-B/32 (its config, random weights: ``clip-vit-base-patch32-random``), a generated
catalogue of 14,718 items with 224-px images and 19,026 users (toys_games' sizes), 8 groups,
batch 16, one global and one personalised epoch, for LoRA, (IA)3 and IISAN, each in fp32 and in
bf16 (``mixed_precision``): seconds per global and per personalised epoch, test-evaluation
seconds, peak CUDA memory (peak RSS on a CPU). One command on a GPU machine:

    python benchmarks/efficiency.py --device cuda          # writes results/efficiency_paper.{json,md}

Hours on one GPU (generating 14,718 JPEGs and caching their pixels is a one-off of minutes).
On a CPU, ``--parts paper`` runs the same configuration at a CPU-sized scale (``--paper_users``,
``--paper_items``; default 64 users, 48 items) and says so in the JSON and the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, markdown_table, run_cli, scratch_folder, write_outputs  # noqa: E402

TPME_WEIGHTS = {"time": 0.45, "params": 0.1, "memory": 0.45}


def memory_mb(record: dict) -> float:
    return record.get("peak_cuda_memory_mb", record["peak_memory_mb"])


def stage_seconds(record: dict) -> tuple[float | None, float | None]:
    """Mean seconds of a global and of a personalised epoch (the first of each stage dropped
    when the stage has more than one: it pays one-off costs such as caches and grouping)."""
    seconds = record["train_epoch_seconds"]
    log = record.get("grouping_log") or []
    split = log[0]["epoch"] if log else len(seconds)

    def steady(part: list[float]) -> float | None:
        if not part:
            return None
        return statistics.mean(part[1:] if len(part) > 1 else part)

    return steady(seconds[:split]), steady(seconds[split:])


def minmax(values: dict[str, float]) -> dict[str, float]:
    low, high = min(values.values()), max(values.values())
    return {k: 0.0 if high == low else (v - low) / (high - low) for k, v in values.items()}


def tpme(rows: list[dict]) -> dict[str, float]:
    """TPME per backend (IISAN's efficiency metric), over the rows with the fewest groups."""
    fewest = min(r["n_groups"] for r in rows)
    base = {r["peft_type"]: r for r in rows if r["n_groups"] == fewest}
    if len(base) < 2:
        return {}
    time = minmax({k: r["global_epoch_s"] for k, r in base.items()})
    params = minmax({k: float(r["trainable"]) for k, r in base.items()})
    memory = minmax({k: r["memory_mb"] for k, r in base.items()})
    return {k: TPME_WEIGHTS["time"] * time[k] + TPME_WEIGHTS["params"] * params[k]
            + TPME_WEIGHTS["memory"] * memory[k] for k in base}


def scaled_dataset(n_items: int) -> dict[str, int]:
    """mmdemo generator sizes for a catalogue of ``n_items`` (half as many users)."""
    return {"n_items": n_items, "n_users": max(150, n_items // 2), "max_len": min(20, n_items // 4)}


PAPER_SIZE = {"users": 19026, "items": 14718}  # toys_games after the paper's filtering
CPU_SIZE = {"users": 64, "items": 48}
PRECISIONS = {"fp32": "no", "bf16": "bf16"}


def paper_scale(args: argparse.Namespace, workdir: Path, device_args: list[str]) -> dict:
    """Part 3: the paper's configuration (or a CPU-sized copy of it), fp32 vs bf16 per backend."""
    from recbole_perpeft.data.mmdemo import generate_mmdemo

    on_gpu = args.device == "cuda"
    users = args.paper_users or (PAPER_SIZE if on_gpu else CPU_SIZE)["users"]
    items = args.paper_items or (PAPER_SIZE if on_gpu else CPU_SIZE)["items"]
    full = (users, items) == (PAPER_SIZE["users"], PAPER_SIZE["items"])
    scale = ("the paper's" if full else "CPU-sized" if not on_gpu else "reduced") + \
        f": {users} users, {items} items (the paper's toys_games: 19,026 users, 14,718 items)"
    name = f"paper{users}x{items}"
    data = workdir / "data"
    print(f"[data] generating {name} (224-px images)", flush=True)
    generate_mmdemo(data / name, n_users=users, n_items=items, image_size=224, seed=args.seed,
                    max_len=min(20, items // 4), min_len=min(6, items // 4))
    common = [f"--data_path={data}", f"--cache_dir={workdir / 'cache'}", f"--seed={args.seed}",
              "--foundation_model=clip-vit-base-patch32-random", "--n_groups=8", "--train_batch_size=16",
              "--epochs=2", "--warmup_epochs=1", "--eval_batch_size=256", "--plots=False", *device_args,
              *args.extra]
    rows = []
    for backend in args.paper_backends:
        for label, precision in PRECISIONS.items():
            print(f"[run] paper scale: peft={backend} {label}", flush=True)
            record = run_cli(["--model=PerPEFT", f"--dataset={name}", f"--peft_type={backend}",
                              f"--mixed_precision={precision}", *common],
                             workdir=workdir / f"paper-{backend}-{label}", timeout=48 * 3600)
            global_s, personal_s = stage_seconds(record)
            rows.append({"peft_type": backend, "precision": label, "global_epoch_s": global_s,
                         "personalised_epoch_s": personal_s, "eval_s": record["eval_seconds"],
                         "peak_cuda_memory_mb": record.get("peak_cuda_memory_mb"),
                         "peak_rss_mb": record["peak_memory_mb"], "wall_s": record["wall_seconds"],
                         "device": record["device"], "groups": record["groups"],
                         "test_ndcg@20": record["test_result"]["ndcg@20"],
                         "trainable": record["params"]["trainable"]})
    return {"scale": scale, "users": users, "items": items, "image_size": 224, "n_groups": 8,
            "train_batch_size": 16, "foundation_model": "clip-vit-base-patch32-random",
            "epochs": "1 global + 1 personalised", "rows": rows}


def paper_table(paper: dict, where: str) -> str:
    memory = "peak CUDA MB" if any(r["peak_cuda_memory_mb"] for r in paper["rows"]) else "peak RSS MB"
    text = (f"### The paper's configuration ({where}; scale: {paper['scale']}; CLIP ViT-B/32 from its "
            "config with random weights, 224-px images, 8 groups, batch 16)\n\n")
    rows = []
    by_key = {(r["peft_type"], r["precision"]): r for r in paper["rows"]}
    for r in paper["rows"]:
        fp32 = by_key.get((r["peft_type"], "fp32"))
        speed = (fp32["global_epoch_s"] / r["global_epoch_s"]) if fp32 and r["global_epoch_s"] else None
        rows.append([r["peft_type"], r["precision"], r["global_epoch_s"], r["personalised_epoch_s"] or "-",
                     f"{speed:.2f}x" if speed else "-", r["eval_s"],
                     r["peak_cuda_memory_mb"] if r["peak_cuda_memory_mb"] else r["peak_rss_mb"], r["wall_s"]])
    return text + markdown_table(["PEFT", "precision", "global epoch s", "personalised epoch s",
                                  "global epoch vs fp32", "test eval s", memory, "run s"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["lora", "ia3", "iisan", "none"])
    parser.add_argument("--groups", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--catalogue", nargs="*", type=int, default=[1000, 4000, 16000],
                        help="item counts for the scaling part (none: skip it)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--foundation_model", default="tiny-clip")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--extra", nargs="*", default=[], help="more --KEY=VALUE for every run")
    parser.add_argument("--items", type=int, default=None,
                        help="part 1 on a generated mmdemo variant of this many items (users: half as many) "
                             "instead of mmdemo itself; keeps the ViT-B/32 runs to minutes on a CPU")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available (RecBole's use_gpu); cuda fails clearly without a GPU")
    parser.add_argument("--parts", nargs="+", choices=["backends", "catalogue", "paper"], default=None,
                        help="default: paper with --device cuda, else backends and catalogue")
    parser.add_argument("--paper_backends", nargs="+", default=["lora", "ia3", "iisan"])
    parser.add_argument("--paper_users", type=int, default=None, help="paper part: users (default: the paper's "
                        "19,026 on CUDA, 64 on a CPU)")
    parser.add_argument("--paper_items", type=int, default=None, help="paper part: items (14,718 / 48)")
    parser.add_argument("--out", default=None,
                        help="default: results/efficiency (parts 1-2), results/efficiency_paper (part 3)")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but PyTorch sees no CUDA device on this machine", file=sys.stderr)
        sys.exit(2)
    parts = args.parts or (["paper"] if args.device == "cuda" else ["backends", "catalogue"])
    device_args = {"auto": [], "cpu": ["--use_gpu=False"], "cuda": ["--use_gpu=True"]}[args.device]
    results = Path(__file__).parent / "results"
    if "paper" in parts:
        workdir = scratch_folder("bench-efficiency-paper-")
        paper = paper_scale(args, workdir, device_args)
        info = machine()
        where = info.get("gpu", f"{info['device']}, {info['cpu_count']} CPUs")
        write_outputs(Path(args.out or results / "efficiency_paper"),
                      {"machine": info, "settings": vars(args), **paper}, paper_table(paper, where))
        if parts == ["paper"]:
            return
    if "backends" not in parts:
        args.backends = []
    if "catalogue" not in parts:
        args.catalogue = []
    args.extra = [*args.extra, *device_args]
    from recbole_perpeft.data.mmdemo import generate_mmdemo

    workdir = scratch_folder("bench-efficiency-")
    data = workdir / "data"
    dataset = "mmdemo"
    if args.quick:
        generate_mmdemo(data / "mmquick", n_users=150, n_items=160, max_len=12)
        dataset, args.epochs = "mmquick", 2
        args.groups, args.catalogue = args.groups[:2], [n for n in args.catalogue if n <= 320] or [160]
    elif args.items:
        dataset = f"mmscale{args.items}"
        generate_mmdemo(data / dataset, **scaled_dataset(args.items), seed=args.seed)
    common = [f"--data_path={data}", f"--cache_dir={workdir / 'cache'}", f"--seed={args.seed}",
              f"--foundation_model={args.foundation_model}", f"--epochs={args.epochs}", "--warmup_epochs=1",
              "--train_batch_size=64", "--plots=False", *args.extra]
    rows = []
    for backend in args.backends:
        for groups in args.groups:
            print(f"[run] peft={backend} n_groups={groups}", flush=True)
            record = run_cli(["--model=PerPEFT", f"--dataset={dataset}", f"--peft_type={backend}",
                              f"--n_groups={groups}", *common], workdir=workdir / f"{backend}-{groups}")
            global_s, personal_s = stage_seconds(record)
            rows.append({"peft_type": backend, "n_groups": groups, "global_epoch_s": global_s,
                         "personalised_epoch_s": personal_s,
                         "ratio": personal_s / global_s if global_s and personal_s else None,
                         "eval_s": record["eval_seconds"], "memory_mb": memory_mb(record),
                         "epoch_seconds": record["train_epoch_seconds"], "wall_s": record["wall_seconds"],
                         "trainable": record["params"]["trainable"],
                         "peft_per_group": record["params_breakdown"]["peft_per_group"],
                         "foundation": record["params_breakdown"]["foundation"]})
    scores = tpme(rows)
    scaling = []
    for n_items in args.catalogue:
        name = f"mmscale{n_items}"
        generate_mmdemo(data / name, **scaled_dataset(n_items), seed=args.seed)
        print(f"[run] catalogue {n_items} items", flush=True)
        record = run_cli(["--model=PerPEFT", f"--dataset={name}", "--n_groups=1", *common], workdir=workdir / name)
        scaling.append({"items": n_items, "users": record["dataset_stats"]["users"],
                        "interactions": record["dataset_stats"]["interactions"],
                        "epoch_s": statistics.mean(record["train_epoch_seconds"]),
                        "eval_s": record["eval_seconds"], "memory_mb": memory_mb(record)})
    info = machine()
    where = info.get("gpu", f"{info['device']}, {info['cpu_count']} CPUs")
    text = f"### Efficiency per backend and n_groups ({args.foundation_model}, {dataset}, {where})\n\n"
    text += markdown_table(
        ["PEFT", "n_groups", "global epoch s", "personalised epoch s", "ratio", "test eval s", "run s",
         "peak memory MB", "trainable", "PEFT / group", f"TPME (n_groups={min(args.groups)})"],
        [[r["peft_type"], r["n_groups"], r["global_epoch_s"], r["personalised_epoch_s"] or "-",
          f"{r['ratio']:.2f}" if r["ratio"] else "-", r["eval_s"], r["wall_s"], r["memory_mb"], r["trainable"],
          r["peft_per_group"], f"{scores[r['peft_type']]:.3f}" if r["n_groups"] == min(args.groups) and scores else ""]
         for r in rows])
    if scaling:
        text += f"\n### Catalogue size (global model, LoRA, batch 64, {where})\n\n"
        text += markdown_table(["items", "users", "interactions", "epoch s", "test eval s", "peak memory MB"],
                               [[s["items"], s["users"], s["interactions"], s["epoch_s"], s["eval_s"], s["memory_mb"]]
                                for s in scaling])
    write_outputs(Path(args.out or results / "efficiency"),
                  {"machine": info, "settings": vars(args), "rows": rows, "tpme": scores,
                   "tpme_weights": TPME_WEIGHTS, "catalogue_scaling": scaling}, text)


if __name__ == "__main__":
    main()

"""The PerPEFT reference implementation vs recbole-perpeft, on the same planted data, in one run.

The reference (github.com/kswoo97/PerPEFT, ``perpeft_lora_ia3.py``) is *not* part of this
repository: clone it yourself and pass its folder. This script

1. generates planted data (mmdemo's generator: ``--users`` users, ``--items`` items, 256-px JPEGs);
2. writes it in the reference's layout (``dataset/<name>_final.txt`` with 1-based ``user item``
   lines in time order, ``<name>_item2id_final.pickle``, ``<name>_texts_final.pickle``,
   ``<name>_images/<ASIN>.jpg``) and saves the tiny CLIP (``tiny-clip``, seeded random weights;
   the same model both sides use) as ``openai/clip-vit-base-patch32/`` in the reference's working
   folder, where its hard-coded ``from_pretrained("openai/clip-vit-base-patch32")`` finds it;
   (ours loads the same folder);
3. runs the reference with LoRA, batch 16, 8 groups and one personalised epoch, and reads the
   seconds of that epoch from the line it prints after it (its own ``time.time()`` around the
   epoch's loop). The reference hard-codes 10 global epochs before grouping; they are not timed,
   so the only change made to its code is that number, replaced by ``--reference_global_epochs``
   (default 1) in the text the interpreter runs; the file on disk is untouched;
4. runs recbole-perpeft on the same data with the same settings (tiny CLIP, LoRA, 8 groups,
   batch 16, 1 global + 1 personalised epoch) in rounds with the reference, once under the
   paper's recipe (``--recipe=paper``: BCE, one negative per position, as the reference) and once
   under the default recipe's loss with one sample per user (``--train_unit=user``), and reports
   the personalised epoch's seconds (medians) and the ratios.

    git clone https://github.com/kswoo97/PerPEFT /tmp/PerPEFT
    python benchmarks/reference.py --reference /tmp/PerPEFT     # writes results/reference.{json,md}

The reference needs scikit-learn, peft and transformers (all installed with this package's
``--dev`` extras); on a machine without CUDA its ``torch.cuda.amp`` autocast and loss scaling
switch themselves off, as ours do (``mixed_precision: auto`` is off on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import machine, markdown_table, run_cli, scratch_folder, write_outputs  # noqa: E402

NAME = "planted"
# The reference's entry point and the line of it that fixes the global stage's length.
ENTRY = "perpeft_lora_ia3.py"
GLOBAL_EPOCHS = re.compile(r"^(\s*)inter_epoch\s*=\s*10\s*$", re.M)
# A one-line launcher: run the reference's file as __main__ with that one number changed.
LAUNCHER = (
    "import re, sys; path = sys.argv[1]; n = sys.argv[2]; sys.argv = [path] + sys.argv[3:]; "
    "sys.path.insert(0, __import__('os').path.dirname(path)); "
    "src = re.sub(r'^(\\s*)inter_epoch\\s*=\\s*10\\s*$', lambda m: m.group(1) + 'inter_epoch = ' + n, "
    "open(path).read(), count=1, flags=re.M); "
    "exec(compile(src, path, 'exec'), {'__name__': '__main__', '__file__': path})"
)


def write_reference_layout(dataset_dir: Path, workdir: Path) -> dict[str, int]:
    """Our generated dataset in the reference's files, under ``workdir/dataset``."""
    inter = [line.split("\t") for line in (dataset_dir / f"{NAME}.inter").read_text().splitlines()[1:]]
    items = [line.split("\t") for line in (dataset_dir / f"{NAME}.item").read_text().splitlines()[1:]]
    item_index = {row[0]: i + 1 for i, row in enumerate(items)}  # 1-based, as the release
    user_index: dict[str, int] = {}
    lines = []
    for user, item, _ in inter:  # the file is in global time order, so each user's items are too
        uid = user_index.setdefault(user, len(user_index) + 1)
        lines.append((uid, item_index[item]))
    lines.sort(key=lambda pair: pair[0])  # grouped by user, time order kept (stable sort)
    out = workdir / "dataset"
    images = out / f"{NAME}_images"
    images.mkdir(parents=True)
    (out / f"{NAME}_final.txt").write_text("".join(f"{u} {i}\n" for u, i in lines))
    with open(out / f"{NAME}_item2id_final.pickle", "wb") as f:
        pickle.dump({index: item for item, index in item_index.items()}, f)
    with open(out / f"{NAME}_texts_final.pickle", "wb") as f:
        pickle.dump({row[0]: row[1] for row in items}, f)
    for row in items:
        (images / f"{row[0]}.jpg").symlink_to(dataset_dir / "images" / row[2])
    return {"users": len(user_index), "items": len(items), "interactions": len(lines)}


def save_tiny_clip(target: Path, seed: int, image_size: int) -> None:
    """The tiny CLIP both sides load, as a Hugging Face model folder.

    ``tiny-clip``'s towers (seeded random weights) with 512-d projections: the reference
    hard-codes 1,024-d item features (ViT-B/32's two 512-d embeddings). ``image_size`` 32 is
    tiny-clip's own input (8-px patches); 224 is ViT-B/32's input geometry (32-px patches).
    """
    from transformers import CLIPProcessor

    from recbole_perpeft.encoders.clip import build_tiny_clip

    encoder = build_tiny_clip(seed, projection_dim=512, image_size=image_size, patch_size=8 if image_size <= 64 else 32)
    encoder.model.save_pretrained(target)
    processor = encoder.processor
    CLIPProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer).save_pretrained(target)


def run_reference(reference: Path, workdir: Path, global_epochs: int, timeout: int) -> dict:
    entry = reference / ENTRY
    if not GLOBAL_EPOCHS.search(entry.read_text()):
        raise SystemExit(f"error: {entry} has no line 'inter_epoch = 10'; is this the reference's code?")
    command = [sys.executable, "-c", LAUNCHER, str(entry), str(global_epochs), "--dataset", NAME,
               "--device", "cpu", "--peft_type", "lora", "--batch_size", "16", "--num_epochs", "1", "--C", "8"]
    env = dict(os.environ, PYTHONPATH=str(reference), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    (workdir / "reference.log").write_text(completed.stdout + "\n--- stderr ---\n" + completed.stderr)
    if completed.returncode:
        raise RuntimeError(f"the reference failed (log: {workdir / 'reference.log'}):\n{completed.stderr[-3000:]}")
    return {"personalised_epoch_s": personalised_seconds(completed.stdout), "wall_s": wall,
            "log": str(workdir / "reference.log")}


def personalised_seconds(stdout: str) -> float:
    """The float the reference prints right after its personalised epoch (``print(T2 - T1)``):
    the first bare float after the line with the batch schedule's shape, ``(N,)``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"\(\d+,\)", line.strip()))
    for line in lines[start + 1:]:
        if re.fullmatch(r"\d+\.\d+(e[-+]?\d+)?", line.strip()):
            return float(line)
    raise ValueError("no personalised epoch time in the reference's output")


def run_ours(data: Path, clip: Path, workdir: Path, seed: int, recipe: list[str]) -> dict:
    # The content cache (pixels, tokens) is shared by our runs, as across the runs of a real project.
    record = run_cli(["--model=PerPEFT", f"--dataset={NAME}", f"--data_path={data}", f"--foundation_model={clip}",
                      "--peft_type=lora", "--n_groups=8", "--train_batch_size=16", *recipe, "--epochs=2",
                      "--warmup_epochs=1", f"--seed={seed}", f"--cache_dir={workdir.parent / 'cache'}", "--plots=False",
                      "--use_gpu=False"], workdir=workdir)
    seconds = record["train_epoch_seconds"]
    return {"personalised_epoch_s": seconds[1], "global_epoch_s": seconds[0], "groups": record["groups"]["sizes"],
            "wall_s": record["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="a checkout of github.com/kswoo97/PerPEFT")
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--items", type=int, default=3200)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--reference_global_epochs", type=int, default=1)
    parser.add_argument("--clip_image_size", type=int, default=32,
                        help="the tiny CLIP's input size: 32 (tiny-clip's) or 224 (ViT-B/32's, 32-px patches)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (ours, ours, reference); medians")
    parser.add_argument("--timeout", type=int, default=6 * 3600)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "reference"))
    args = parser.parse_args()
    reference = Path(args.reference).resolve()
    if not (reference / ENTRY).is_file():
        print(f"error: {reference} holds no {ENTRY}: pass a checkout of github.com/kswoo97/PerPEFT", file=sys.stderr)
        sys.exit(2)
    from recbole_perpeft.data.mmdemo import generate_mmdemo

    workdir = scratch_folder("bench-reference-")
    data = workdir / "data"
    generate_mmdemo(data / NAME, n_users=args.users, n_items=args.items, image_size=256, seed=args.seed)
    ref_dir = workdir / "reference"
    stats = write_reference_layout(data / NAME, ref_dir)
    clip = ref_dir / "openai" / "clip-vit-base-patch32"
    save_tiny_clip(clip, seed=0, image_size=args.clip_image_size)
    # Both with one sample per user per epoch, as the reference (the default recipe's window unit
    # makes every training item a target: an epoch of ~10x the work).
    recipes = {"paper recipe (BCE, as the reference)": ["--recipe=paper"],
               "default recipe's loss (sampled softmax, shared negatives)": ["--train_unit=user"]}
    ours: dict[str, list[dict]] = {name: [] for name in recipes}
    refs: list[dict] = []
    order = []
    for _ in range(args.repeats):  # rounds: every implementation sees the machine's load in turn
        for name, recipe in recipes.items():
            print(f"[ours] {name}", flush=True)
            ours[name].append(run_ours(data, clip, workdir / f"ours-{len(order)}", args.seed, recipe))
            order.append(f"ours, {name}")
        print("[reference] running (its global stage, grouping, one personalised epoch, evaluation)", flush=True)
        refs.append(run_reference(reference, ref_dir, args.reference_global_epochs, args.timeout))
        order.append("reference")
    ref_s = statistics.median(r["personalised_epoch_s"] for r in refs)
    summary = {}
    for name, runs in ours.items():
        median = statistics.median(r["personalised_epoch_s"] for r in runs)
        summary[name] = {"personalised_epoch_s": median, "ratio": ref_s / median}
    info = machine()
    load = [round(x, 2) for x in os.getloadavg()]
    commit = subprocess.run(["git", "-C", str(reference), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    payload = {"machine": info, "load_average_at_end": load, "reference_commit": commit, "settings": vars(args),
               "data": stats, "order": order, "reference": refs, "reference_personalised_epoch_s": ref_s, "ours": ours,
               "summary": summary}
    where = info.get("gpu", f"{info['device']}, {info['cpu_count']} cores")
    text = (f"### Reference vs recbole-perpeft: one personalised epoch ({where}; planted data: {stats['users']} "
            f"users, {stats['items']} items, 256-px JPEGs; tiny CLIP at {args.clip_image_size} px, LoRA, 8 groups, "
            f"batch 16; reference commit "
            f"{commit[:10]}; load average at the end {load})\n\n")
    rows = [["reference (kswoo97/PerPEFT)", ref_s, "1.00x"]]
    rows += [[f"recbole-perpeft, {name}", s["personalised_epoch_s"], f"{s['ratio']:.1f}x"]
             for name, s in summary.items()]
    text += markdown_table(["implementation", "personalised epoch s", "speed-up over the reference"], rows)
    text += (f"\nMedians over {args.repeats} rounds, each running ours (both recipes), then the reference; "
             "every run: " + ", ".join(f"{r['personalised_epoch_s']:.1f}" for r in refs) + " s (reference); "
             + "; ".join(f"{n}: " + ", ".join(f"{r['personalised_epoch_s']:.1f}" for r in rs) for n, rs in ours.items())
             + " s.\n")
    write_outputs(Path(args.out), payload, text)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

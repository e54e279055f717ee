"""Efficiency of the PEFT backends and of the content path (issue: encoders with PEFT).

Part 1, per backend (each in a clean process through the CLI): seconds per training epoch,
validation / test evaluation seconds, peak memory, trainable and foundation parameters.

Part 2, the content path, on the same batches of users: our cached content (processed once,
memory-mapped) against re-reading and re-processing every item's JPEG and title at every
step (what the reference implementation does); and batched full-ranking evaluation against
scoring users one by one.

    python benchmarks/encoder_backends.py                 # mmdemo, tiny CLIP, CPU
    python benchmarks/encoder_backends.py --quick         # toy size smoke run
Writes benchmarks/results/encoder_backends.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, markdown_table, run_cli, scratch_folder, write_outputs  # noqa: E402
from recbole_perpeft.data.mmdemo import generate_mmdemo  # noqa: E402


def backend_runs(args, data_path: Path, dataset: str) -> list[dict]:
    rows = []
    for backend in args.backends:
        print(f"[backend] {backend} ...", flush=True)
        start = time.perf_counter()
        record = run_cli(
            ["--model=PerPEFT", f"--dataset={dataset}", f"--data_path={data_path}",
             f"--foundation_model={args.foundation_model}", f"--peft_type={backend}", "--n_groups=1",
             f"--epochs={args.epochs}", f"--train_batch_size={args.batch_size}",
             f"--cache_dir={args.cache_dir}"],
            workdir=Path(args.workdir) / backend,
        )
        rows.append({
            "backend": backend,
            "seconds_per_epoch": statistics.mean(record["train_epoch_seconds"]),
            "train_epoch_seconds": record["train_epoch_seconds"],
            "valid_eval_seconds": statistics.mean(record["valid_seconds"]) if record["valid_seconds"] else None,
            "test_eval_seconds": record["eval_seconds"],
            "peak_memory_mb": record["peak_memory_mb"],
            "peak_cuda_memory_mb": record.get("peak_cuda_memory_mb"),
            "trainable_params": record["params"]["trainable"],
            "total_params": record["params"]["total"],
            "peft_params": record["params_breakdown"]["peft_per_group"],
            "foundation_params": record["params_breakdown"]["foundation"],
            "process_seconds": time.perf_counter() - start,
            "test_ndcg@20": record["test_result"]["ndcg@20"],
        })
    return rows


class DiskReprocessingStore:
    """Serves item content by decoding each JPEG and tokenising each title on every request."""

    def __init__(self, store, item_content, processor) -> None:
        self.store = store
        self.item_content = item_content
        self.processor = processor
        self.n_items = store.n_items

    def check_ids(self, item_ids):
        self.store.check_ids(item_ids)

    def gather(self, rows: torch.Tensor, pin: bool = False) -> dict[str, torch.Tensor]:
        ids = rows.tolist()
        titles = [self.item_content.titles[i] for i in ids]
        input_ids, attention_mask = self.processor.tokenize(titles)
        images = []
        for i in ids:
            path = self.item_content.image_paths[i]
            with Image.open(path) if path else Image.new("RGB", (32, 32)) as image:
                images.append(image.convert("RGB"))
        out = self.store.gather(rows)
        out["input_ids"] = torch.from_numpy(np.asarray(input_ids))
        out["attention_mask"] = torch.from_numpy(np.asarray(attention_mask))
        out["pixel_values"] = torch.from_numpy(self.processor.process_images(images))
        return out


def content_path(args, data_path: Path, dataset: str) -> dict:
    from recbole_perpeft.run import build_config, build_run

    config = build_config("PerPEFT", dataset, config_dict={
        "data_path": str(data_path), "foundation_model": args.foundation_model, "peft_type": "lora",
        "n_groups": 1, "show_progress": False, "state": "WARNING", "cache_dir": args.cache_dir,
    })
    built = build_run(config, with_trainer=False)
    data, train_data, test_data, model = built.dataset, built.train_data, built.test_data, built.model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n_rows = len(train_data._dataset)
    batches = [train_data._dataset[torch.arange(s, min(s + 16, n_rows))].to(config["device"])
               for s in range(0, 16 * args.steps, 16)]

    def seconds_per_batch() -> float:
        model.train()
        start = time.perf_counter()
        for batch in batches:
            optimizer.zero_grad()
            model.calculate_loss(batch).backward()
            optimizer.step()
        return (time.perf_counter() - start) / len(batches)

    encoder = model.items.encoder
    cached = seconds_per_batch()
    cached_store = encoder.store
    encoder.store = DiskReprocessingStore(cached_store, data.item_content, encoder.foundation.processor)
    reprocessing = seconds_per_batch()
    encoder.store = cached_store

    # Evaluation: all test users batched (one item table) against one user at a time.
    model.eval()
    users = test_data._dataset.inter_feat[: args.eval_users].to(config["device"])
    with torch.no_grad():
        start = time.perf_counter()
        model.full_sort_predict(users)
        batched = (time.perf_counter() - start) / len(users)
        start = time.perf_counter()
        for row in range(len(users)):
            model.train()  # the reference re-encodes the catalogue for every user
            model.eval()
            model.full_sort_predict(users[row : row + 1])
        one_by_one = (time.perf_counter() - start) / len(users)
    return {
        "batch_users": 16,
        "steps": len(batches),
        "image_size_on_disk": args.image_size,
        "cached_seconds_per_batch": cached,
        "reprocessing_seconds_per_batch": reprocessing,
        "speedup_cache_vs_reprocessing": reprocessing / cached,
        "eval_users": len(users),
        "batched_eval_seconds_per_user": batched,
        "one_by_one_eval_seconds_per_user": one_by_one,
        "speedup_batched_eval": one_by_one / batched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["lora", "ia3", "iisan", "none"])
    parser.add_argument("--foundation_model", default="tiny-clip")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=256, help="pixels of the generated JPEGs")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=800)
    parser.add_argument("--steps", type=int, default=20, help="batches timed in the content-path part")
    parser.add_argument("--eval_users", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="toy size smoke run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "encoder_backends"))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--cache_dir", default=None)
    args = parser.parse_args()
    if args.quick:
        args.users, args.items, args.epochs, args.steps, args.eval_users = 200, 200, 1, 3, 20
        args.image_size, args.batch_size = 64, 64
    args.workdir = args.workdir or str(scratch_folder("bench-encoders-"))
    args.cache_dir = args.cache_dir or str(Path(args.workdir) / "cache")
    data_path = Path(args.workdir) / "data"
    dataset = f"mmbench{args.image_size}"
    generate_mmdemo(data_path / dataset, n_users=args.users, n_items=args.items, image_size=args.image_size)

    backends = backend_runs(args, data_path, dataset)
    content = content_path(args, data_path, dataset)
    payload = {"machine": machine(), "settings": vars(args), "backends": backends, "content_path": content}
    device = machine()["device"]
    table = f"### Backends (n_groups=1, {args.foundation_model}, batch {args.batch_size}, {device})\n\n"
    table += markdown_table(
        ["backend", "s/epoch", "valid eval s", "test eval s", "peak RSS MB", "trainable", "PEFT params",
         "foundation params", "test NDCG@20"],
        [[r["backend"], r["seconds_per_epoch"], r["valid_eval_seconds"], r["test_eval_seconds"],
          r["peak_memory_mb"], r["trainable_params"], r["peft_params"], r["foundation_params"],
          r["test_ndcg@20"]] for r in backends],
    )
    table += f"\n### Content path (LoRA, batches of 16 users, {args.image_size}px JPEGs on disk)\n\n"
    table += markdown_table(
        ["what", "seconds", "ratio"],
        [["train step, cached content", content["cached_seconds_per_batch"], 1.0],
         ["train step, re-read + re-process every step", content["reprocessing_seconds_per_batch"],
          content["speedup_cache_vs_reprocessing"]],
         ["evaluation per user, batched", content["batched_eval_seconds_per_user"], 1.0],
         ["evaluation per user, one by one", content["one_by_one_eval_seconds_per_user"],
          content["speedup_batched_eval"]]],
    )
    write_outputs(Path(args.out), payload, table)


if __name__ == "__main__":
    main()

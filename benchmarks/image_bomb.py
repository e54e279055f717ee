"""Peak memory of a run whose dataset hides a decompression bomb in ``images/``.

A 13000x13000 PNG of one colour is ~20 KB on disk and 507 MB once decoded to RGB. The pixel cap
(``max_image_pixels``, read from the header before decoding) must refuse it, so a run over the
dataset with the bomb peaks at the same memory as over the dataset without it. Three runs of
PerPEFT (tiny CLIP, one group, one epoch), each in its own process with a cold content cache:

* ``clean``: the dataset as generated;
* ``bomb``: the same dataset, one item's image replaced by the PNG bomb;
* ``bomb, cap raised``: the same, with ``max_image_pixels`` above the bomb's size: what the cap
  prevents (PIL alone only warns at this size).

    python benchmarks/image_bomb.py            # writes results/image_bomb.{json,md}
    python benchmarks/image_bomb.py --quick    # a 4000x4000 bomb, no cap-raised run
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, run_cli, scratch_folder, write_outputs  # noqa: E402
from recbole_perpeft.data.images import DEFAULT_MAX_IMAGE_PIXELS  # noqa: E402
from recbole_perpeft.data.mmdemo import generate_mmdemo  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DATASET = "bombdemo"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """A black 1-bit PNG of ``width`` x ``height``, compressed row by row (never held decoded).

    One bit per pixel keeps the file tiny (~20 KB at 13000x13000); decoding it to RGB, as the
    content cache does for every image, takes three bytes per pixel.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte "none", then the row's bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")
    )
    return path


def make_datasets(root: Path, bomb_side: int, n_users: int, n_items: int) -> tuple[Path, Path, str]:
    """``root/clean/DATASET`` and ``root/bomb/DATASET``; the latter with one image replaced by a bomb."""
    clean = generate_mmdemo(root / "clean" / DATASET, n_users=n_users, n_items=n_items, seed=7)
    bomb = root / "bomb" / DATASET
    shutil.copytree(clean, bomb)
    # mmdemo names its files after the dataset folder's stem: rename them for DATASET.
    lines = (bomb / f"{DATASET}.item").read_text().splitlines()
    header, rows = lines[0], [line.split("\t") for line in lines[1:]]
    victim = next(row for row in rows if row[2])
    (bomb / "images" / victim[2]).unlink()
    write_blank_png(bomb / "images" / "bomb.png", bomb_side, bomb_side)
    victim[2] = "bomb.png"
    (bomb / f"{DATASET}.item").write_text("\n".join([header, *("\t".join(r) for r in rows)]) + "\n")
    return clean.parent, bomb.parent, victim[0]


def cache_report(cache_dir: Path) -> dict[str, Any]:
    """The build report of the (single) content cache under ``cache_dir``."""
    metas = list((cache_dir / "content").glob("*/meta.json"))
    return json.loads(metas[0].read_text())["report"] if metas else {}


def measure(data_path: Path, workdir: Path, extra: list[str]) -> dict[str, Any]:
    cache_dir = workdir / "cache"  # a cold cache: every image is decoded (or refused) in this run
    record = run_cli(
        [
            "--model=PerPEFT", f"--dataset={DATASET}", f"--data_path={data_path}", "--foundation_model=tiny-clip",
            "--n_groups=1", "--epochs=1", "--train_batch_size=64", "--plots=False", f"--cache_dir={cache_dir}",
            *extra,
        ],
        workdir=workdir,
    )
    report = cache_report(cache_dir)
    return {
        "peak_memory_mb": record["peak_memory_mb"],
        "wall_seconds": record["wall_seconds"],
        "images_with_content": report.get("n_with_image"),
        "image_too_many_pixels": report.get("image_too_many_pixels", 0),
        "image_corrupt": report.get("image_corrupt", 0),
    }


def table(payload: dict[str, Any]) -> str:
    side = payload["bomb_side"]
    lines = [
        f"# Decompression bomb in images/ ({side}x{side} PNG, {payload['bomb_file_kb']:.0f} KB on disk)",
        "",
        f"PerPEFT, tiny CLIP, 1 group, 1 epoch, {payload['dataset']['users']} users / "
        f"{payload['dataset']['items']} items, cold content cache, one process per run, "
        "OMP_NUM_THREADS=1. Ratio: peak RSS over the clean run's, measured in this one invocation.",
        "",
        "| run | max_image_pixels | images refused (too many pixels) | images kept | peak RSS (MB) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    clean = payload["runs"]["clean"]["peak_memory_mb"]
    for name, run in payload["runs"].items():
        lines.append(
            f"| {name} | {run['max_image_pixels']:,} | {run['image_too_many_pixels']} | {run['images_with_content']} "
            f"| {run['peak_memory_mb']:.0f} | {run['peak_memory_mb'] / clean:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 4000x4000 bomb and no cap-raised run")
    parser.add_argument("--out", type=Path, default=RESULTS / "image_bomb", help="output stem (.json, .md)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    side = 4000 if args.quick else 13000
    users, items = (100, 160) if args.quick else (400, 800)
    root = Path(args.workdir) if args.workdir else scratch_folder("image-bomb-")
    clean_path, bomb_path, victim = make_datasets(root, side, users, items)
    # The quick bomb (16 MP) is under the default cap; a lower cap refuses it the same way.
    cap = 10_000_000 if args.quick else DEFAULT_MAX_IMAGE_PIXELS
    runs: dict[str, dict[str, Any]] = {}
    plan = [("clean", clean_path, cap), ("bomb", bomb_path, cap)]
    if not args.quick:
        plan.append(("bomb, cap raised", bomb_path, 2 * side * side))
    for name, data_path, max_pixels in plan:
        workdir = root / "runs" / name.replace(" ", "_").replace(",", "")
        runs[name] = {"max_image_pixels": max_pixels,
                      **measure(data_path, workdir, [f"--max_image_pixels={max_pixels}"])}
    payload = {
        "machine": machine(),
        "bomb_side": side,
        "bomb_file_kb": (bomb_path / DATASET / "images" / "bomb.png").stat().st_size / 1024,
        "bomb_item": victim,
        "dataset": {"users": users, "items": items},
        "runs": runs,
        "ratio_bomb_over_clean": runs["bomb"]["peak_memory_mb"] / runs["clean"]["peak_memory_mb"],
    }
    write_outputs(args.out, payload, table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What can item content add on mmdemo at all? PerPEFT with an *oracle* item encoder.

On mmdemo the content models trail the ID-only model, and the accuracy table cannot say whether
the demo's random-weight tiny CLIP is to blame or the data. This script swaps the encoder for
the best one possible: every item's "features" are the one-hot ground truth of its generating
aspects (domain, category word, colour, shape, pattern, brand, adjective, from
``item_aspects.tsv``), served frozen (``peft_type: none``) through the usual per-group projectors.
Everything else is the plugin's default recipe for mmdemo (``properties/dataset/mmdemo.yaml``).
The oracle is a diagnostic registered as item encoder ``oracle`` in this script's own worker
processes only (``--item_encoder=oracle``), never a product path.

Rows, for each variant of the generator and each seed: ID only (content off), IISAN over the
tiny CLIP (global and PerPEFT, the demo's real encoder), the oracle encoder (global and PerPEFT),
and the oracle content path alone (ID embeddings held near zero: ``reg_weight`` 10, content
weight 1). Variants: ``mmdemo`` (the embedded demo: 3,200 items, ~8 interactions each) and
``mmdemo-12800`` (the same generator with 12,800 items, ~2 interactions each: where IDs are
starved and content has to carry the ranking).

    OMP_NUM_THREADS=1 python benchmarks/mmdemo_oracle.py --jobs 2       # ~12 min on 2 CPU cores
    python benchmarks/mmdemo_oracle.py --quick                          # tiny smoke run (1 minute)

Writes benchmarks/results/mmdemo_oracle.{json,md}: validation and test NDCG@20, mean ± std over
seeds (settings are not chosen here: every row runs the defaults).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    REPO,
    last_flag_wins,
    machine,
    markdown_table,
    mean_std,
    run_cli,
    scratch_folder,
    write_outputs,
)
from benchmarks.mmdemo_ceiling import read_tsv

ORACLE_FLAG = "--oracle-encoder"  # first argument of this script's worker processes
ORACLE_ENCODER = "oracle"  # its name in the plugin's item encoder registry, registered by those workers
ASPECT_COLUMNS = ("domain", "category", "colour", "shape", "pattern", "brand", "adjective")
VARIANTS: dict[str, dict[str, int]] = {"mmdemo": {}, "mmdemo-12800": {"n_items": 12800}}
CONTENT_ONLY = ["--reg_weight=10", "--content_weight=1.0"]
# row -> (uses the oracle encoder, flags)
ROWS: dict[str, tuple[bool, list[str]]] = {
    "ID only": (False, ["--peft_type=none", "--n_groups=1", "--content_weight=0"]),
    "global IISAN (tiny CLIP)": (False, ["--peft_type=iisan", "--n_groups=1"]),
    "PerPEFT IISAN (tiny CLIP)": (False, ["--peft_type=iisan"]),
    "global, oracle encoder": (True, ["--n_groups=1"]),
    "PerPEFT, oracle encoder": (True, []),
    "global, oracle content only": (True, ["--n_groups=1", *CONTENT_ONLY]),
    "PerPEFT, oracle content only": (True, CONTENT_ONLY),
}


def oracle_features(aspects_file: Path, item_tokens: list[str]) -> Any:
    """One row per internal item id: the item's aspects one-hot (padding and unknown ids: zeros)."""
    import torch

    rows = read_tsv(aspects_file, "item_id")
    values = {column: sorted({row[column] for row in rows.values()}) for column in ASPECT_COLUMNS}
    offsets, width = {}, 0
    for column in ASPECT_COLUMNS:
        offsets[column] = width
        width += len(values[column])
    features = torch.zeros(len(item_tokens), width)
    for index, token in enumerate(item_tokens):
        row = rows.get(token)
        if row is not None:
            for column in ASPECT_COLUMNS:
                features[index, offsets[column] + values[column].index(row[column])] = 1.0
    return features


def build_oracle_encoder(config, dataset, n_groups: int) -> Any:
    """The frozen default encoder (``peft_type: none``) with :func:`oracle_features` as its features."""
    from recbole_perpeft.item_encoder import build_default_item_encoder
    from recbole_perpeft.peft_backends.frozen import FrozenGroupedEncoder

    encoder = build_default_item_encoder(config, dataset, n_groups)
    if not isinstance(encoder, FrozenGroupedEncoder):
        raise SystemExit("the oracle encoder replaces frozen features: run it with --peft_type=none")
    tokens = list(dataset.field2id_token[dataset.iid_field])
    features = oracle_features(Path(config["data_path"]) / "item_aspects.tsv", tokens)
    encoder.features = features.to(encoder.features.device)
    encoder.feature_dim = features.shape[1]
    return encoder


def run_with_oracle_encoder(cli_args: list[str]) -> int:
    """The plugin's CLI with the oracle registered as item encoder ``oracle`` (chosen by the row's flags)."""
    from recbole_perpeft.cli import main
    from recbole_perpeft.item_encoder import register_item_encoder

    register_item_encoder(ORACLE_ENCODER)(build_oracle_encoder)
    return main(cli_args)


def mmdemo_flags() -> list[str]:
    """properties/dataset/mmdemo.yaml as flags, so that every variant trains like the demo."""
    import yaml

    settings = yaml.safe_load((REPO / "properties" / "dataset" / "mmdemo.yaml").read_text())
    return [f"--{key}={value}" for key, value in settings.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each its own process)")
    parser.add_argument("--quick", action="store_true", help="tiny data, 2 epochs, one seed: a smoke run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mmdemo_oracle"))
    args = parser.parse_args(argv)
    from recbole_perpeft.data.mmdemo import generate_mmdemo

    workdir = scratch_folder("bench-oracle-")
    shared = mmdemo_flags()
    sizes: dict[str, dict[str, int]] = {name: dict(VARIANTS[name]) for name in args.variants}
    if args.quick:
        sizes = {name: {"n_users": 150, "n_items": 160 * (4 if "12800" in name else 1), "max_len": 12}
                 for name in args.variants}
        shared += ["--epochs=2", "--warmup_epochs=1"]
        args.seeds = args.seeds[:1]
    for name, size in sizes.items():
        generate_mmdemo(workdir / "data" / name.replace("-", "_"), **size)
    plan = [(variant, row, seed) for variant in args.variants for row in args.rows for seed in args.seeds]

    def run(index: int, variant: str, row: str, seed: int) -> dict:
        oracle, flags = ROWS[row]
        print(f"[{index}/{len(plan)}] {variant} | {row} | seed {seed}", flush=True)
        cli_flags = last_flag_wins([f"--dataset={variant.replace('-', '_')}", f"--data_path={workdir / 'data'}",
                     "--model=PerPEFT", *shared, *flags, f"--seed={seed}", "--plots=False",
                     f"--checkpoint_dir={workdir / 'saved'}", f"--cache_dir={workdir / 'cache'}",
                                    *(["--peft_type=none", f"--item_encoder={ORACLE_ENCODER}"] if oracle else [])])
        entry = [sys.executable, str(Path(__file__).resolve()), ORACLE_FLAG] if oracle else None
        record = run_cli(cli_flags, workdir=workdir / f"{variant}-{index}", entry=entry)
        best_epoch, _ = max(record["valid_scores"], key=lambda epoch_score: epoch_score[1])
        return {"variant": variant, "row": row, "seed": seed, "flags": cli_flags,
                "valid_ndcg@20": record["best_valid_result"]["ndcg@20"],
                "test_ndcg@20": record["test_result"]["ndcg@20"],
                "best_epoch": best_epoch, "valid_ndcg@20_by_epoch": [score for _, score in record["valid_scores"]],
                "grouping_log": record.get("grouping_log"), "dataset_stats": record.get("dataset_stats")}

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        records = list(pool.map(lambda job: run(job[0], *job[1]), enumerate(plan, 1)))

    sections = []
    for variant in args.variants:
        stats = next(r["dataset_stats"] for r in records if r["variant"] == variant) or {}
        described = ", ".join(f"{value:,} {key}" for key, value in stats.items())
        rows = []
        for row in args.rows:
            mine = [r for r in records if r["variant"] == variant and r["row"] == row]
            rows.append([row, len(mine), mean_std([r["valid_ndcg@20"] for r in mine]),
                         mean_std([r["test_ndcg@20"] for r in mine]),
                         ", ".join(str(r["best_epoch"]) for r in mine)])
        sections.append(f"### {variant} ({described})\n\n" + markdown_table(
            ["row", "seeds", "valid NDCG@20", "test NDCG@20", "best epoch per seed (from 0)"], rows))
    table = ("## mmdemo with an oracle item encoder (one-hot ground-truth aspects; mmdemo's default recipe; "
             f"{'quick smoke run; ' if args.quick else ''}mean ± std over seeds {', '.join(map(str, args.seeds))})"
             "\n\n" + "\n".join(sections))
    write_outputs(Path(args.out), {"machine": machine(), "seeds": args.seeds, "quick": args.quick,
                                   "runs": records}, table)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == ORACLE_FLAG:
        sys.exit(run_with_oracle_encoder(sys.argv[2:]))
    sys.exit(main())

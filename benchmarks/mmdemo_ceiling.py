"""How good can a recommender be on mmdemo? The ranking ceiling from the generator's ground truth.

mmdemo's users pick their next item from the popularity-weighted pool of items they like (their
segment's domain and preferred aspect value; with probability ``noise`` from the whole
catalogue). A ranker that knew each user's segment and preferred value and every item's
generating popularity would put the liked items first, by popularity, then the rest by
popularity: under the generator, no ranking has a higher expected NDCG for a single held-out
item. This script scores that ranking, and two weaker references, under the plugin's protocol
(leave-one-out by time, full ranking over the items that occur in the interactions, history
excluded), so the accuracy table's rows can be read as a share of what is reachable:

* ``ceiling``: segment + preferred value + generating popularity (the Bayes ranking);
* ``segment only``: the user's domain known, not the preferred value (what a perfect grouping
  alone gives, with popularity);
* ``popularity``: training-interaction counts, nothing about the user.

It also probes what the demo's encoder can give the content path: a linear classifier of each
item aspect (domain, colour, shape, brand, adjective) on the frozen ``tiny-clip`` features of the
catalogue (the image half, the title half and both), trained on 75 % of the items and scored on
the rest, for the encoder seeds of the accuracy runs.

    python benchmarks/mmdemo_ceiling.py                       # the embedded mmdemo (generated if missing)
    python benchmarks/mmdemo_ceiling.py --dataset_dir DIR     # any folder generate_mmdemo wrote
    python benchmarks/mmdemo_ceiling.py --probe_seeds         # no probe

Writes benchmarks/results/mmdemo_ceiling.{json,md}. Takes under a minute on a CPU; no recommender is trained.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, markdown_table, write_outputs  # noqa: E402

CUTOFFS = (10, 20, 30)


def read_sequences(inter_file: Path) -> dict[str, list[str]]:
    """Each user's items in time order (the split's order: ties keep file order)."""
    timed: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    with inter_file.open(encoding="utf-8") as f:
        next(f)
        for line_no, line in enumerate(f):
            user, item, timestamp = line.rstrip("\n").split("\t")[:3]
            timed[user].append((float(timestamp), line_no, item))
    return {user: [item for _, _, item in sorted(rows)] for user, rows in timed.items()}


def read_tsv(path: Path, key: str) -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return {row[key]: row for row in csv.DictReader(f, delimiter="\t")}


def ndcg_and_hit(rank: int) -> dict[str, float]:
    """Metrics of one held-out item at 0-based ``rank``."""
    out = {}
    for k in CUTOFFS:
        out[f"ndcg@{k}"] = 1.0 / math.log2(rank + 2) if rank < k else 0.0
        out[f"hit@{k}"] = 1.0 if rank < k else 0.0
    return out


def rank_of(scores: np.ndarray, target: int, history: list[int]) -> int:
    masked = scores.copy()
    masked[history] = -np.inf
    return int((masked > masked[target]).sum())


def ceilings(dataset_dir: Path) -> dict:
    from recbole_perpeft.data.mmdemo import item_popularity

    name = dataset_dir.name
    sequences = read_sequences(dataset_dir / f"{name}.inter")
    aspects = read_tsv(dataset_dir / "item_aspects.tsv", "item_id")
    segments = read_tsv(dataset_dir / "groups.tsv", "user_id")
    items = sorted({item for seq in sequences.values() for item in seq})
    index = {item: i for i, item in enumerate(items)}
    true_popularity = item_popularity(dataset_dir)
    generating = np.array([true_popularity[item] for item in items])
    # an offset above every popularity puts each liked (or in-domain) item before all the others
    offset = 10.0 * float(generating.max())
    column = {name: np.array([aspects[item][name] for item in items])
              for name in ("domain", *{row["aspect"] for row in segments.values()})}

    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    for split, held_out in (("valid", -2), ("test", -1)):
        train_counts = Counter(item for seq in sequences.values() for item in seq[:held_out])
        counts = np.array([train_counts[item] for item in items], dtype=float)
        per_ranker: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for user, seq in sequences.items():
            if len(seq) < 3:
                continue
            truth = segments[user]
            in_domain = column["domain"] == truth["segment"]
            liked = in_domain & (column[truth["aspect"]] == truth["value"])
            target = index[seq[held_out]]
            history = [index[item] for item in seq[:held_out]]
            scorers = {
                "ceiling": liked * offset + generating,
                "segment only": in_domain * offset + generating,
                "popularity": counts,
            }
            for ranker, scores in scorers.items():
                for metric, value in ndcg_and_hit(rank_of(scores, target, history)).items():
                    per_ranker[ranker][metric].append(value)
                    per_ranker[f"{ranker} | {truth['segment']} ({truth['aspect']})"][metric].append(value)
        results[split] = {ranker: {m: float(np.mean(v)) for m, v in metrics.items()}
                          for ranker, metrics in per_ranker.items()}
    return {"dataset_dir": str(dataset_dir), "users": len(sequences), "items": len(items), "results": results}


PROBED_ASPECTS = ("domain", "colour", "shape", "brand", "adjective")


def linear_probe_accuracy(features: torch.Tensor, labels: list[str], seed: int) -> float:
    """Held-out accuracy of a multinomial logistic regression (75 / 25 split of the rows)."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    x = (features - features.mean(0)) / (features.std(0) + 1e-6)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = (3 * len(y)) // 4
    fit, held = order[:cut], order[cut:]
    linear = torch.nn.Linear(x.shape[1], len(classes))
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        # a little L2, so that separable aspects do not push the weights to infinity
        loss = torch.nn.functional.cross_entropy(linear(x[fit]), y[fit]) + 1e-3 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((linear(x[held]).argmax(1) == y[held]).float().mean())


def aspect_probe(dataset_dir: Path, seeds: list[int]) -> dict:
    """Linear-probe accuracy of each aspect from frozen tiny-CLIP features, mean over ``seeds``."""
    from PIL import Image

    from recbole_perpeft.encoders import build_tiny_clip

    name = dataset_dir.name
    aspects = read_tsv(dataset_dir / "item_aspects.tsv", "item_id")
    with (dataset_dir / f"{name}.item").open(encoding="utf-8") as f:
        next(f)
        titles = {row[0]: row[1] for row in (line.rstrip("\n").split("\t") for line in f)}
    items = sorted(aspects)
    accuracy: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    content: dict[str, torch.Tensor] = {}
    for seed in seeds:
        torch.manual_seed(seed)
        encoder = build_tiny_clip(seed)
        if not content:  # the processor does not depend on the seed: decode and tokenise once
            input_ids, attention_mask = encoder.processor.tokenize([titles[item] for item in items])
            pixels = encoder.processor.process_images(
                [Image.open(dataset_dir / "images" / f"{item}.jpg").convert("RGB") for item in items])
            content = {"input_ids": torch.as_tensor(input_ids), "attention_mask": torch.as_tensor(attention_mask),
                       "pixel_values": torch.as_tensor(pixels)}
        with torch.no_grad():
            features = encoder.encode(content)
        half = features.shape[1] // 2
        parts = {"image": features[:, :half], "title": features[:, half:], "both": features}
        for aspect in PROBED_ASPECTS:
            labels = [aspects[item][aspect] for item in items]
            for part, x in parts.items():
                accuracy[aspect][part].append(linear_probe_accuracy(x, labels, seed))
    chance = {aspect: 1.0 / len({aspects[item][aspect] for item in items}) for aspect in PROBED_ASPECTS}
    return {"seeds": seeds, "chance": chance,
            "accuracy": {a: {part: float(np.mean(v)) for part, v in parts.items()} for a, parts in accuracy.items()}}


def report(found: dict) -> str:
    metrics = [f"{kind}@{k}" for kind in ("ndcg", "hit") for k in CUTOFFS]
    rows = []
    # the three rankers over all users first, then each segment's rows together
    for ranker in sorted(found["results"]["test"], key=lambda name: ("|" in name, name.split(" | ")[-1])):
        rows.append([ranker, found["results"]["valid"][ranker]["ndcg@20"],
                     *(found["results"]["test"][ranker][m] for m in metrics)])
    rows = [[r[0], *(f"{v:.4f}" for v in r[1:])] for r in rows]
    text = (f"## mmdemo ranking ceiling ({found['users']} users, {found['items']} items; "
            f"leave-one-out, full ranking, history excluded)\n\n"
            + markdown_table(["ranker", "valid NDCG@20", *(f"test {m.upper()}" for m in metrics)], rows))
    probe = found.get("probe")
    if probe:
        probe_rows = [[aspect, f"{probe['chance'][aspect]:.3f}",
                       *(f"{probe['accuracy'][aspect][part]:.3f}" for part in ("image", "title", "both"))]
                      for aspect in PROBED_ASPECTS]
        text += (f"\n\n## What the frozen tiny CLIP's features say about each aspect (linear probe, held-out "
                 f"accuracy, mean over encoder seeds {', '.join(map(str, probe['seeds']))})\n\n"
                 + markdown_table(["aspect", "chance", "image half", "title half", "both"], probe_rows))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", default=None,
                        help="an mmdemo folder (default: the embedded one, generated if missing)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mmdemo_ceiling"))
    parser.add_argument("--probe_seeds", nargs="*", type=int, default=[2020, 2021, 2022],
                        help="tiny-CLIP seeds of the aspect probe (none: no probe)")
    args = parser.parse_args(argv)
    if args.dataset_dir is None:
        from recbole_perpeft.data.registry import resolve_dataset_dir

        dataset_dir = resolve_dataset_dir("mmdemo", None)
    else:
        dataset_dir = Path(args.dataset_dir)
    found = ceilings(dataset_dir)
    if args.probe_seeds:
        found["probe"] = aspect_probe(dataset_dir, args.probe_seeds)
    text = report(found)
    write_outputs(Path(args.out), {"machine": machine(), **found}, text)  # also prints the tables
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

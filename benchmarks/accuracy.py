"""Accuracy benchmark: RecBole's sequential baselines vs global PEFT vs PerPEFT, same protocol.

Every run goes through the CLI in its own process with the plugin's evaluation protocol
(properties/overall.yaml: leave-one-out by time, full ranking, history excluded, NDCG and Hit at
10/20/30, model selection on validation NDCG@20), so the numbers of all rows of a setting are
comparable. Rows:

* ``SASRec (RecBole)``, ``GRU4Rec``, ``BERT4Rec``: RecBole's own models with their defaults
  (history window 10 like PerPEFT's);
* ``SASRec (PerPEFT's backbone)``: RecBole's SASRec with PerPEFT's hidden size, layers, heads,
  dropout and window, and a softmax loss (RecBole's full ``CE``; PerPEFT's default sampled
  softmax approximates it): the like-for-like ID-only baseline;
* ``global, ID only``: PerPEFT's own code path with the content branch off (``--peft_type=none
  --content_weight=0 --n_groups=1``): what content adds is read against this row;
* ``global, frozen encoder``: the foundation model's features without any adapter;
* per PEFT backend, ``global PEFT`` (``--n_groups=1``) and ``PerPEFT`` (the setting's groups).

    python benchmarks/accuracy.py                                  # the default settings, 3 seeds
    python benchmarks/accuracy.py --datasets scientific --backends iisan
    python benchmarks/accuracy.py --report                         # tables from the kept runs
    OMP_NUM_THREADS=1 python benchmarks/accuracy.py --jobs 2       # two runs at a time
    python benchmarks/accuracy.py --quick                          # toy smoke run

Each run's record is kept under ``--runs`` (default benchmarks/results/accuracy_runs/) and a run
already there is not repeated, so an interrupted benchmark continues where it stopped. Writes
benchmarks/results/accuracy.{json,md}. ``--report`` runs nothing: it rebuilds the tables from
the records already kept and lists the planned runs that have none yet.

The ``scientific`` settings use Amazon "Industrial and Scientific" (Amazon Reviews 2023 format,
titles only), converted on first use with the project's own ``amazon2023`` converter
(``--kcore 1 --no-images``) from ``--scientific_raw`` (default ``../shared/data/amazon-scientific``)
into ``$RECBOLE_PERPEFT_HOME/datasets``; nothing of it is committed. ``scientific-1k`` is the same
data restricted to a fixed sample of 1,000 users (``--users``), for LoRA, whose backpropagation
through MiniLM for every step's titles a 2-core CPU cannot afford on all 12,076 users.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    content_train_seconds,
    id_check_train_seconds,
    last_flag_wins,
    machine,
    markdown_table,
    mean_std,
    run_and_keep,
    scratch_folder,
    write_outputs,
)

BASELINES = ("SASRec", "GRU4Rec", "BERT4Rec")
BACKENDS = ("lora", "ia3", "iisan")
METRICS = ("ndcg@10", "ndcg@20", "ndcg@30", "hit@10", "hit@20", "hit@30")
DEFAULT_SCIENTIFIC_RAW = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "amazon-scientific"

# Every model sees the same window of history: the last 10 items (PerPEFT's default, the
# reference's; RecBole's models default to 50).
WINDOW = ["--MAX_ITEM_LIST_LENGTH=10"]
# RecBole's SASRec shaped like PerPEFT's backbone (properties/model/PerPEFT.yaml), full softmax.
PERPEFT_BACKBONE = ["--hidden_size=32", "--inner_size=32", "--n_layers=2", "--n_heads=4",
                    "--hidden_dropout_prob=0.3", "--attn_dropout_prob=0.3", "--loss_type=CE"]
TEXT = ["--foundation_model=all-MiniLM-L6-v2"]

# A setting is a dataset with the flags every row gets on it (``args``), the flags of RecBole's
# baselines (``baseline_args``) and of the PerPEFT rows (``perpeft_args``); ``rows`` and
# ``backends`` restrict what runs where the rest would not fit the machine's time.
SETTINGS: dict[str, dict] = {
    # RecBole's baselines get up to 50 epochs with early stopping, as elsewhere: under mmdemo's
    # 12, GRU4Rec's and BERT4Rec's validation was still rising steeply at the last epoch
    "mmdemo": {"dataset": "mmdemo", "args": [], "baseline_args": ["--train_batch_size=512", "--epochs=50"],
               "perpeft_args": []},
    # One setting per dataset: PerPEFT's defaults (schedule: auto ends each stage on validation)
    # plus the foundation model and, where a 2-core CPU cannot afford the rest, the backend.
    # LoRA and (IA)3 backpropagate through MiniLM for every title of a step (up to ~1,700 with
    # 1024 negatives; 140 steps an epoch in windows): too slow on a 2-core CPU, so ml-100k runs
    # IISAN here; --backends lora ia3 iisan runs them all where a GPU is at hand.
    "ml-100k": {"dataset": "ml-100k", "args": [], "baseline_args": ["--train_batch_size=512", "--epochs=50"],
                "perpeft_args": [*TEXT], "backends": ["iisan"]},
    "scientific": {"dataset": "scientific", "args": [],
                   "baseline_args": ["--train_batch_size=512", "--epochs=50"],
                   "perpeft_args": [*TEXT], "backends": ["iisan"]},
    # LoRA backpropagates through MiniLM for every title of a step and encodes the catalogue once
    # per group at every validation: on a 2-core CPU only a 1,000-user sample fits (~5 minutes an
    # epoch on one thread: 17 steps of ~20 s), with 4 groups, 256 negatives and a cap of 8 epochs.
    "scientific-1k": {"dataset": "scientific-1k", "args": [],
                      "baseline_args": ["--train_batch_size=512", "--epochs=50"],
                      "perpeft_args": [*TEXT, "--epochs=8", "--n_groups=4", "--num_negatives=256"],
                      "backends": ["lora", "iisan"]},
}
DEFAULT_SETTINGS = ["mmdemo", "ml-100k", "scientific", "scientific-1k"]


def id_only_flags() -> list[str]:
    """The ``global, ID only`` row is the ID-only check's twin (recbole_perpeft/id_check.py): the
    content run's flags, then the default ``id_fallback_config``, then what makes it ID-only."""
    import yaml

    from recbole_perpeft.config import ConfigLoader, properties_dir
    from recbole_perpeft.id_check import ID_ONLY_SETTINGS

    defaults = yaml.load((properties_dir() / "model" / "PerPEFT.yaml").read_text(), Loader=ConfigLoader)
    settings = {**(defaults.get("id_fallback_config") or {}), **ID_ONLY_SETTINGS}
    return [f"--{key}={value}" for key, value in settings.items()]


ID_ONLY = id_only_flags()


def row_args(setting: dict, row: str) -> list[str] | None:
    """The flags of one row of a setting, or None where the row does not run there."""
    rows = setting.get("rows")
    if rows is not None and row not in rows:
        return None
    baseline = [*WINDOW, *setting["baseline_args"]]
    if row == "SASRec (RecBole)":
        return ["--model=SASRec", *baseline]
    if row == "SASRec (PerPEFT's backbone)":
        return ["--model=SASRec", *baseline, *PERPEFT_BACKBONE]
    if row in ("GRU4Rec", "BERT4Rec"):
        return [f"--model={row}", *baseline]
    perpeft = ["--model=PerPEFT", *setting["perpeft_args"]]
    if row == "global, ID only":
        return last_flag_wins([*perpeft, *ID_ONLY])
    if row == "global, frozen encoder":
        return last_flag_wins([*perpeft, "--n_groups=1", "--peft_type=none"])
    kind, backend = row.rsplit(" (", 1)
    backend = backend.rstrip(")")
    if backend not in setting.get("backends", BACKENDS):
        return None
    return last_flag_wins([*perpeft, f"--peft_type={backend}", *(["--n_groups=1"] if kind == "global PEFT" else [])])


def row_names(backends) -> list[str]:
    names = ["SASRec (RecBole)", "SASRec (PerPEFT's backbone)", "GRU4Rec", "BERT4Rec",
             "global, ID only", "global, frozen encoder"]
    for backend in backends:
        names += [f"global PEFT ({backend})", f"PerPEFT ({backend})"]
    return names


def planned_runs(settings, rows, seeds) -> list[dict]:
    runs = []
    for name in settings:
        spec = SETTINGS[name]
        for seed in seeds:
            for row in rows:
                args = row_args(spec, row)
                if args is not None:
                    runs.append({"dataset": name, "row": row, "seed": seed,
                                 "shared": [f"--dataset={spec['dataset']}", *spec["args"]], "args": args})
    return runs


def merged_flags(own: list[str], *shared: str) -> list[str]:
    """``shared`` then ``own`` --KEY=VALUE flags, a key of ``own`` replacing the shared one
    (a global-PEFT row's --n_groups=1 over the dataset's groups)."""
    return last_flag_wins([*shared, *own])


def run_name(run: dict) -> str:
    safe = run["row"].replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("'", "")
    return f"{run['dataset']}__{safe}__{run['seed']}"


def _tests(records, dataset, row) -> dict[int, dict]:
    return {r["seed"]: r["record"]["test_result"] for r in records if r["dataset"] == dataset and r["row"] == row}


def comparisons(records: list[dict], dataset: str) -> list[list]:
    """PerPEFT vs global PEFT and global PEFT vs the ID-only baselines: mean change of test
    NDCG@20 and on how many seeds the first is at least as good."""
    out = []
    pairs = []
    for backend in BACKENDS:
        pairs.append((f"PerPEFT ({backend})", f"global PEFT ({backend})"))
        for baseline in ("SASRec (PerPEFT's backbone)", "global, ID only"):
            pairs.append((f"global PEFT ({backend})", baseline))
    for better, than in pairs:
        a, b = _tests(records, dataset, better), _tests(records, dataset, than)
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        mean_a = statistics.mean(a[s]["ndcg@20"] for s in seeds)
        mean_b = statistics.mean(b[s]["ndcg@20"] for s in seeds)
        wins = sum(a[s]["ndcg@20"] >= b[s]["ndcg@20"] for s in seeds)
        out.append([better, than, f"{100 * (mean_a / mean_b - 1):+.1f} %", f"{wins}/{len(seeds)}"])
    return out


def train_seconds(record: dict) -> float:
    """A run's training seconds, the ID-only check's twin included."""
    return content_train_seconds(record) + id_check_train_seconds(record)


def ids_served(records: list[dict]) -> str:
    """On how many seeds the ID-only check served the ID-only backbone (``-``: no check ran)."""
    checked = [r["id_check"]["served"] for r in records if r.get("id_check")]
    return f"{checked.count('id_only')}/{len(checked)}" if checked else "-"


def table(records: list[dict]) -> str:
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        rows = []
        for row in dict.fromkeys(r["row"] for r in records if r["dataset"] == dataset):
            tests = list(_tests(records, dataset, row).values())
            kept = [r["record"] for r in records if r["dataset"] == dataset and r["row"] == row]
            epochs = [len(r["train_loss"]) for r in kept]
            seconds = statistics.mean(map(train_seconds, kept))
            rows.append([row, len(tests), max(epochs), ids_served(kept), f"{seconds:.0f}",
                         *(mean_std([t[m] for t in tests]) for m in METRICS)])
        spec = SETTINGS[dataset]
        out.append(f"### {dataset} (test, mean ± std over seeds; --dataset={spec['dataset']} "
                   f"{' '.join(spec['args'])}; PerPEFT rows {' '.join(spec['perpeft_args']) or 'defaults'}; "
                   f"baselines {' '.join([*WINDOW, *spec['baseline_args']])})\n\n"
                   + markdown_table(["model", "seeds", "epochs run", "ID-only served", "train s",
                                     *(m.upper() for m in METRICS)], rows))
        compared = comparisons(records, dataset)
        if compared:
            out.append("\n" + markdown_table(["model", "against", "test NDCG@20", "seeds at least as good"],
                                             compared))
    return "\n".join(out)


def prepare_scientific(raw: Path, data_path: Path, users: int) -> None:
    """Convert Amazon Scientific with the project's converter (as a user would), once, and
    write ``scientific-1k``: the interactions of a fixed sample of ``users`` users."""
    from recbole_perpeft.data.convert import main as convert

    if not (data_path / "scientific" / "scientific.inter").is_file():
        code = convert(["amazon2023", "--reviews", str(raw / "Industrial_and_Scientific.jsonl.gz"),
                        "--meta", str(raw / "meta_Industrial_and_Scientific.jsonl.gz"), "--name", "scientific",
                        "--out", str(data_path), "--kcore", "1", "--no-images", "--quiet"])
        if code != 0:
            raise SystemExit(f"could not convert {raw} (exit code {code})")
    sample_dir = data_path / "scientific-1k"
    if (sample_dir / "scientific-1k.inter").is_file():
        return
    lines = (data_path / "scientific" / "scientific.inter").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    all_users = sorted({row.split("\t", 1)[0] for row in rows})
    # a fixed sample: the users whose id hashes lowest (no RNG, same on every machine)
    chosen = set(sorted(all_users, key=lambda u: hashlib.sha256(u.encode()).hexdigest())[:users])
    kept = [row for row in rows if row.split("\t", 1)[0] in chosen]
    kept_items = {row.split("\t")[1] for row in kept}
    item_lines = (data_path / "scientific" / "scientific.item").read_text(encoding="utf-8").splitlines()
    sample_dir.mkdir(parents=True, exist_ok=True)
    (sample_dir / "scientific-1k.inter").write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    (sample_dir / "scientific-1k.item").write_text(
        "\n".join([item_lines[0], *(line for line in item_lines[1:] if line.split("\t", 1)[0] in kept_items)]) + "\n",
        encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS),
                        help="benchmark settings: a dataset and the flags every model gets on it")
    parser.add_argument("--rows", nargs="+", default=None, help="row names (default: all)")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="PEFT backends (default: each setting's own; given, they replace them)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020, 2021, 2022])
    parser.add_argument("--extra", nargs="*", default=[], help="more --KEY=VALUE for every run")
    parser.add_argument("--quick", action="store_true", help="toy data, one seed, two epochs")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each its own process)")
    parser.add_argument("--report", action="store_true", help="run nothing; tables from the kept records")
    parser.add_argument("--runs", default=str(Path(__file__).parent / "results" / "accuracy_runs"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "accuracy"))
    parser.add_argument("--scientific_raw", default=str(DEFAULT_SCIENTIFIC_RAW),
                        help="folder of Industrial_and_Scientific.jsonl.gz and its meta file")
    parser.add_argument("--data_path", default=None,
                        help="where converted datasets go (default $RECBOLE_PERPEFT_HOME/datasets)")
    parser.add_argument("--users", type=int, default=1000, help="users of the scientific-1k sample")
    parser.add_argument("--cache_dir", default=None,
                        help="content / IISAN caches (default: the plugin's, reused across runs)")
    args = parser.parse_args()
    workdir = scratch_folder("bench-accuracy-")
    extra = list(args.extra)
    if args.cache_dir:
        extra.append(f"--cache_dir={args.cache_dir}")
    from recbole_perpeft.cache import perpeft_home

    data_path = Path(args.data_path) if args.data_path else perpeft_home() / "datasets"
    if args.quick:
        from recbole_perpeft.data.mmdemo import generate_mmdemo

        generate_mmdemo(workdir / "data" / "mmquick", n_users=150, n_items=160, max_len=12)
        SETTINGS["mmquick"] = {"dataset": "mmquick", "baseline_args": ["--epochs=2"], "perpeft_args": [],
                               "args": ["--foundation_model=tiny-clip", "--epochs=2", "--warmup_epochs=1",
                                        "--n_groups=2", "--train_batch_size=64",
                                        "--id_fallback_config={learning_rate: 1.0e-3, epochs: 2}"]}
        args.datasets, args.seeds = ["mmquick"], args.seeds[:1]
        extra.append(f"--data_path={workdir / 'data'}")
    elif any(name.startswith("scientific") for name in args.datasets) and not args.report:
        prepare_scientific(Path(args.scientific_raw), data_path, args.users)
    for name in args.datasets:
        if SETTINGS[name]["dataset"].startswith("scientific"):
            SETTINGS[name]["args"] = [f"--data_path={data_path}", *SETTINGS[name]["args"]]
    runs_dir = Path(args.runs)
    runs_dir.mkdir(parents=True, exist_ok=True)
    if args.backends:
        for name in args.datasets:
            SETTINGS[name]["backends"] = list(args.backends)
    plan = planned_runs(args.datasets, args.rows or row_names(args.backends or BACKENDS), args.seeds)

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
        seed = f"--seed={run['seed']}"
        return run_and_keep(file, merged_flags(run["args"], *run["shared"], seed, "--plots=False", *extra),
                            merged_flags(run["args"], *run["shared"], seed), workdir / run_name(run),
                            timeout=6 * 3600, id_check=True)

    # each run is its own process; --jobs > 1 runs that many at once (set OMP_NUM_THREADS so
    # that jobs x threads does not exceed the cores)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        found = list(pool.map(record_of, range(1, len(plan) + 1), plan))
    records = [{**{k: run[k] for k in ("dataset", "row", "seed")}, "record": record}
               for run, record in zip(plan, found) if record is not None]
    text = (f"## Accuracy ({machine()['device']}, {machine()['cpu_count']} CPUs, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})\n\n" + table(records))
    settings = {**vars(args), "settings": {name: SETTINGS[name] for name in args.datasets},
                "window": WINDOW, "perpeft_backbone": PERPEFT_BACKBONE}
    write_outputs(Path(args.out), {"machine": machine(), "settings": settings, "runs": records}, text)


if __name__ == "__main__":
    main()

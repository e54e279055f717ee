"""Regenerate every committed benchmark table and the plots docs/usage.md shows with one command.

    python benchmarks/run_all.py            # everything (hours on a 2-core CPU; minutes on a GPU)
    python benchmarks/run_all.py --quick    # toy pass of every script (a few minutes)
    python benchmarks/run_all.py --only accuracy ablation

Runs, in order: the PerPEFT main job on mmdemo (its plots go to results/plots/), the ablation
(n_groups 1 vs 4 over 3 seeds; n_groups 2 and 8; group negatives off; ia3 and iisan), the
accuracy table, the training-recipe ablation, the parameter overhead on ViT-B/32, the efficiency
table, the encoder-backend table, the peak memory with a decompression bomb in images/, throughput
before vs after, mixed precision vs fp32, the paper's configuration at a CPU-sized scale, and
(with ``--reference PATH``) the reference implementation vs ours;
then writes results/SUMMARY.md, all tables in one file.
Each step is a script of its own (see benchmarks/README.md) and can be run alone.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
REPO = BENCH.parent


def ablation_steps(quick: bool) -> list[list[str]]:
    script = str(BENCH / "perpeft_ablation.py")
    if quick:
        return [[script, "--quick", "--groups", "1", "2", "--out", str(RESULTS / "quick" / "perpeft_ablation")]]
    return [
        [script, "--groups", "1", "4"],
        [script, "--groups", "2", "8", "--seeds", "2020", "--out", str(RESULTS / "perpeft_ablation_groups")],
        [script, "--groups", "4", "--negatives", "off", "--seeds", "2020",
         "--out", str(RESULTS / "perpeft_ablation_negatives")],
        [script, "--groups", "1", "4", "--backends", "ia3", "iisan", "--seeds", "2020",
         "--out", str(RESULTS / "perpeft_ablation_backends")],
    ]


def steps(quick: bool) -> dict[str, list[list[str]]]:
    out = RESULTS / "quick" if quick else RESULTS
    flag = ["--quick"] if quick else []
    return {
        "ablation": ablation_steps(quick),
        "accuracy": [[str(BENCH / "accuracy.py"), *flag, "--out", str(out / "accuracy"),
                      "--runs", str(out / "accuracy_runs")]],
        "recipe": [[str(BENCH / "recipe_ablation.py"), *flag, "--out", str(out / "recipe_ablation"),
                    "--runs", str(out / "recipe_ablation_runs")]],
        "overhead": [[str(BENCH / "overhead.py"), *(["--foundation", "tiny-clip"] if quick else []),
                      "--out", str(out / "overhead")]],
        "efficiency": [[str(BENCH / "efficiency.py"), *flag, "--out", str(out / "efficiency")]] + ([] if quick else [
            [str(BENCH / "efficiency.py"), "--foundation_model=clip-vit-base-patch32-random", "--items", "64",
             "--groups", "1", "4", "--catalogue", "--epochs", "3", "--out", str(out / "efficiency_vitb32")]]),
        "encoder_backends": [[str(BENCH / "encoder_backends.py"), "--quick", "--out",
                              str(out / "encoder_backends_quick")]],
        "image_bomb": [[str(BENCH / "image_bomb.py"), *flag, "--out", str(out / "image_bomb")]],
        # issue 16: throughput before vs after, mixed precision, the paper's configuration at a
        # CPU-sized scale (the full scale: efficiency.py --device cuda on a GPU machine)
        "throughput": [[str(BENCH / "throughput.py"), *flag, *(["--parts", "catalogue", "steps"] if quick else []),
                        "--out", str(out / "throughput")]],
        "mixed_precision": [[str(BENCH / "mixed_precision.py"), *flag, "--out", str(out / "mixed_precision")]],
        # the Bayes ceiling of mmdemo's ranking and a probe of the demo encoder (no training; ~1 min)
        "mmdemo_ceiling": [] if quick else [[str(BENCH / "mmdemo_ceiling.py"), "--out", str(out / "mmdemo_ceiling")]],
        # what perfect item content adds on mmdemo (an oracle encoder; ~25 min on one CPU core)
        "mmdemo_oracle": [[str(BENCH / "mmdemo_oracle.py"), *flag, "--out", str(out / "mmdemo_oracle")]],
        "efficiency_paper": [] if quick else [[str(BENCH / "efficiency.py"), "--parts", "paper",
                                               "--out", str(out / "efficiency_paper")]],
    }


def main_job_plots(quick: bool) -> None:
    """The README's main job; its plots become results/plots/ (docs/usage.md shows one)."""
    extra = ["--epochs=2", "--warmup_epochs=1"] if quick else []
    with tempfile.TemporaryDirectory(prefix="bench-mainjob-") as folder:
        work = Path(folder)
        subprocess.run([sys.executable, str(REPO / "run_recbole_perpeft.py"), "--model=PerPEFT", "--dataset=mmdemo",
                        f"--result_file={work / 'mmdemo.json'}", "--show_progress=False", *extra],
                       cwd=work, check=True)
        target = (RESULTS / "quick" if quick else RESULTS) / "plots"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(work / "mmdemo_plots", target)
        shutil.copy(work / "mmdemo.json", target / "mmdemo.json")


def summary(folder: Path) -> Path:
    tables = sorted(p for p in folder.glob("*.md") if p.name != "SUMMARY.md")
    text = "# Benchmark tables\n\nRegenerate with `python benchmarks/run_all.py`.\n\n"
    text += "\n".join(f"## {p.stem}\n\n{p.read_text()}" for p in tables)
    path = folder / "SUMMARY.md"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", default=None,
                        help="main_job ablation accuracy overhead efficiency encoder_backends image_bomb "
                             "throughput mixed_precision mmdemo_ceiling efficiency_paper reference")
    parser.add_argument("--reference", default=None,
                        help="a checkout of github.com/kswoo97/PerPEFT: also run benchmarks/reference.py")
    args = parser.parse_args()
    plan = steps(args.quick)
    if args.reference:
        out = RESULTS / "quick" if args.quick else RESULTS
        script = [str(BENCH / "reference.py"), "--reference", args.reference]
        plan["reference"] = [[*script, "--out", str(out / "reference")],
                             [*script, "--clip_image_size", "224", "--out", str(out / "reference_224")]]
    wanted = args.only or ["main_job", *plan]
    if "main_job" in wanted:
        print("[run_all] main job (plots)", flush=True)
        main_job_plots(args.quick)
    for name in wanted:
        for command in plan.get(name, []):
            print(f"[run_all] {name}: {' '.join(command[1:])}", flush=True)
            subprocess.run([sys.executable, *command], check=True)
    print(summary(RESULTS / "quick" if args.quick else RESULTS))


if __name__ == "__main__":
    main()

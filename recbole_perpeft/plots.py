"""Plots of a run, drawn from its result record alone (so they can be redrawn from the JSON).

    python -m recbole_perpeft.plots results/mmdemo.json [OUT_DIR]

* ``training_curve.png`` (every run): training loss and validation score per epoch, with the
  grouping epoch(s) marked;
* PerPEFT runs with groups, in addition: ``user_groups.png`` (2-D PCA of the user
  representations the groups were formed from, coloured by group, centroids marked),
  ``group_sizes.png`` and ``group_ndcg.png`` (each group's validation NDCG@20 under the global
  model at grouping time and under the final model, plus its test NDCG@20).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in workers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

_DPI = 110


def _metric_name(record: dict[str, Any]) -> str:
    """NDCG@20 where the run measured it, else the run's first reported metric."""
    results = record.get("group_test_results") or {}
    sample = next(iter(results.values()), None) or record.get("test_result") or {}
    return "ndcg@20" if "ndcg@20" in sample else next(iter(sample), "ndcg@20")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def plot_training_curve(record: dict[str, Any], path: Path) -> Path:
    fig, loss_axis = plt.subplots(figsize=(6.4, 3.8))
    losses = record.get("train_loss") or []
    loss_axis.plot(range(len(losses)), losses, "o-", color="tab:blue", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axis.set_ylabel("training loss", color="tab:blue")
    scores = record.get("valid_scores") or []
    if scores:
        score_axis = loss_axis.twinx()
        score_axis.plot([e for e, _ in scores], [s for _, s in scores], "s-", color="tab:orange",
                        label="validation score")
        score_axis.set_ylabel("validation score", color="tab:orange")
    for entry in record.get("grouping_log") or []:
        loss_axis.axvline(entry["epoch"] - 0.5, color="grey", linestyle="--", linewidth=1)
        loss_axis.annotate(entry["event"], (entry["epoch"] - 0.5, loss_axis.get_ylim()[1]), fontsize=8,
                           ha="left", va="top", color="grey")
    loss_axis.set_title(f"{record.get('model')} on {record.get('dataset')}: training curve")
    return _save(fig, path)


def group_colours(n_groups: int) -> list[tuple[float, float, float, float]]:
    """One distinct colour per group: tab10 / tab20 while they last, else evenly spaced hues."""
    if n_groups <= 10:
        return [plt.get_cmap("tab10")(g) for g in range(n_groups)]
    if n_groups <= 20:
        return [plt.get_cmap("tab20")(g) for g in range(n_groups)]
    hues = plt.get_cmap("hsv")
    return [hues(g / n_groups) for g in range(n_groups)]


def plot_user_groups(record: dict[str, Any], path: Path) -> Path:
    view = record["user_projection"]
    centroids = view.get("centroids") or []
    groups = sorted(set(view["group"]))
    colours = group_colours(max([len(centroids), *(g + 1 for g in groups)]))
    fig, axis = plt.subplots(figsize=(5.6, 5.0))
    for group in groups:  # one call per group: its own colour and its own legend entry
        rows = [i for i, g in enumerate(view["group"]) if g == group]
        axis.scatter([view["x"][i] for i in rows], [view["y"][i] for i in rows], color=colours[group], s=8,
                     alpha=0.6, label=f"group {group}")
    if centroids:
        axis.scatter([c[0] for c in centroids], [c[1] if len(c) > 1 else 0 for c in centroids], marker="X",
                     s=160, color=colours[: len(centroids)], edgecolors="black")
    variance = view.get("explained_variance") or []
    labels = [
        f"PC{i + 1}" + (f" ({100 * variance[i]:.0f} % of variance)" if i < len(variance) else "") for i in range(2)
    ]
    axis.set_xlabel(labels[0])
    axis.set_ylabel(labels[1])
    axis.legend(fontsize=8 if len(groups) <= 10 else 6, loc="best", ncol=1 + (len(groups) - 1) // 12,
                markerscale=2)
    axis.set_title(f"User representations at grouping ({len(view['x'])} users)")
    return _save(fig, path)


def plot_group_sizes(record: dict[str, Any], path: Path) -> Path:
    sizes = record["groups"]["sizes"]
    fig, axis = plt.subplots(figsize=(5.0, 3.4))
    axis.bar(range(len(sizes)), sizes, color=group_colours(len(sizes)))
    axis.set_xticks(range(len(sizes)))
    axis.set_xlabel("group")
    axis.set_ylabel("users")
    axis.set_title("Users per group")
    return _save(fig, path)


def plot_group_metric(record: dict[str, Any], path: Path) -> Path:
    metric = _metric_name(record)
    log = record.get("grouping_log") or []
    when = f"after {log[0]['epoch']} global epochs" if log else "at grouping"
    series = {
        f"valid, global model ({when})": record.get("global_group_valid_results") or {},
        "valid, personalised (best epoch)": record.get("best_group_valid_results") or {},
        "test, personalised": record.get("group_test_results") or {},
    }
    groups = sorted({int(g) for results in series.values() for g in results})
    width = 0.8 / len(series)
    fig, axis = plt.subplots(figsize=(6.4, 3.8))
    for index, (label, results) in enumerate(series.items()):
        values = [results.get(str(g), {}).get(metric, float("nan")) for g in groups]
        axis.bar([g + (index - 1) * width for g in groups], values, width, label=label)
    axis.set_xticks(groups)
    axis.set_xlabel("group")
    axis.set_ylabel(metric.upper() if metric.startswith("ndcg") else metric)
    axis.legend(fontsize=8)
    axis.set_title(f"Per-group {metric}: global model vs personalised")
    return _save(fig, path)


def plot_run(record: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Draw every plot the record has data for into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_training_curve(record, out / "training_curve.png")]
    if (record.get("groups") or {}).get("personalised"):
        if record.get("user_projection"):
            written.append(plot_user_groups(record, out / "user_groups.png"))
        written.append(plot_group_sizes(record, out / "group_sizes.png"))
        written.append(plot_group_metric(record, out / "group_ndcg.png"))
    return written


def plots_dir_for(result_file: str | Path | None, checkpoint: str | None) -> Path | None:
    """Where a run's plots go: beside its result file, else beside its checkpoint."""
    if result_file:
        path = Path(result_file)
        return path.with_name(path.stem + "_plots")
    if checkpoint:
        path = Path(checkpoint)
        return path.with_name(path.stem + "_plots")
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not 1 <= len(argv) <= 2:
        print("usage: python -m recbole_perpeft.plots RESULT.json [OUT_DIR]", file=sys.stderr)
        return 2
    result = Path(argv[0])
    try:
        record = json.loads(result.read_text())
    except (OSError, ValueError) as error:
        print(f"error: cannot read {result}: {error}", file=sys.stderr)
        return 2
    out = Path(argv[1]) if len(argv) == 2 else plots_dir_for(result, None)
    for path in plot_run(record, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

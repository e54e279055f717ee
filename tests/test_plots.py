"""Plots beside a run's results: drawn from the record, redrawn from the JSON, switchable off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, SMALL_SEQ, TINY_PERPEFT
from PIL import Image

from recbole_perpeft.data.mmdemo import generate_mmdemo
from recbole_perpeft.quick_start import run_recbole_perpeft

TINY = {**TINY_PERPEFT, "n_groups": 2, "plots": True}
PERPEFT_PLOTS = {"training_curve.png", "user_groups.png", "group_sizes.png", "group_ndcg.png"}


@pytest.fixture(scope="module")
def perpeft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    generate_mmdemo(root / "data" / "mmplot", n_users=200, n_items=160, seed=4)
    result = root / "out" / "run.json"
    record = run_recbole_perpeft(
        "PerPEFT", "mmplot", result_file=result,
        config_dict={**TINY, "data_path": str(root / "data"), "checkpoint_dir": str(root / "saved"),
                     "cache_dir": str(root / "cache")},
    )
    return record, result


def test_perpeft_run_writes_its_plots_beside_the_result(perpeft_run):
    record, result = perpeft_run
    folder = result.with_name("run_plots")
    assert {p.name for p in folder.iterdir()} == PERPEFT_PLOTS
    for name in PERPEFT_PLOTS:
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
    assert json.loads(result.read_text())["plots"] == record["plots"]
    view = record["user_projection"]
    assert len(view["x"]) == len(view["y"]) == len(view["group"]) == record["dataset_stats"]["users"]
    assert set(view["group"]) == set(range(record["groups"]["formed"]))
    assert len(view["centroids"]) == record["groups"]["formed"]
    # the global model's per-group validation metrics, and the final model's, for every group
    groups = {str(g) for g in range(record["groups"]["formed"])}
    assert set(record["global_group_valid_results"]) == groups == set(record["best_group_valid_results"])
    assert [e for e, _ in record["valid_scores"]] == [0, 1, 2]


def test_plots_redraw_from_the_json(perpeft_run, tmp_path):
    _, result = perpeft_run
    out = tmp_path / "again"
    completed = subprocess.run([sys.executable, "-m", "recbole_perpeft.plots", str(result), str(out)],
                               capture_output=True, text=True, cwd=REPO, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert {p.name for p in out.iterdir()} == PERPEFT_PLOTS


def test_sasrec_gets_the_training_curve_and_plots_can_be_off(tmp_path):
    record = run_recbole_perpeft("SASRec", "ml-100k", result_file=tmp_path / "s.json",
                                 config_dict={**SMALL_SEQ, "epochs": 2, "plots": True})
    assert [p.split("/")[-1] for p in record["plots"]] == ["training_curve.png"]
    record = run_recbole_perpeft("SASRec", "ml-100k", result_file=tmp_path / "off.json",
                                 config_dict={**SMALL_SEQ, "epochs": 1, "plots": False})
    assert "plots" not in record and not (tmp_path / "off_plots").exists()


def test_more_than_ten_groups_keep_distinct_colours_and_true_labels(tmp_path, monkeypatch):
    from recbole_perpeft import plots

    n = 14
    record = {
        "user_projection": {"x": [float(i) for i in range(70)], "y": [float(i % 7) for i in range(70)],
                            "group": [i % n for i in range(70)], "centroids": [[g, -g] for g in range(n)],
                            "explained_variance": [0.5, 0.2]},
        "groups": {"sizes": [5] * n},
    }
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_user_groups(record, tmp_path / "u.png")
    plots.plot_group_sizes(record, tmp_path / "s.png")
    legend = figures[0].axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [f"group {g}" for g in range(n)]
    scatter_colours = [tuple(float(c) for c in handle.get_facecolor()[0][:3]) for handle in legend.legend_handles]
    bar_colours = [tuple(bar.get_facecolor()[:3]) for bar in figures[1].axes[0].patches]
    assert len(set(scatter_colours)) == n and scatter_colours == bar_colours  # one colour per group, everywhere
    assert len(set(plots.group_colours(40))) == 40

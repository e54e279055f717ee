"""The mmdemo ceiling benchmark: the generator's popularity is replayed exactly, and the Bayes
ranking it builds beats what knows less about the user."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from conftest import REPO

from recbole_perpeft.data.mmdemo import generate_mmdemo, item_popularity


def test_replayed_popularity_is_the_generating_one(tmp_path):
    # With a wide popularity spread, the items drawn most often must be the ones whose replayed
    # weight is highest: a replay out of step with the generator would give unrelated weights.
    folder = generate_mmdemo(tmp_path / "mm", n_users=400, n_items=160, max_len=12, noise=1.0,
                             popularity_sigma=1.5, image_size=16)
    weights = item_popularity(folder)
    counts: dict[str, int] = {}
    for line in (folder / "mm.inter").read_text().splitlines()[1:]:
        item = line.split("\t")[1]
        counts[item] = counts.get(item, 0) + 1
    items = sorted(weights)
    correlation = np.corrcoef([np.log(weights[i]) for i in items], [np.log1p(counts.get(i, 0)) for i in items])[0, 1]
    assert correlation > 0.8


def test_ceiling_beats_segment_only_and_popularity(tmp_path):
    folder = generate_mmdemo(tmp_path / "mm", n_users=150, n_items=320, max_len=10, noise=0.0, image_size=16)
    out = tmp_path / "ceiling"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "mmdemo_ceiling.py"), "--dataset_dir", str(folder),
                    "--out", str(out), "--probe_seeds", "0"], check=True, capture_output=True, text=True, timeout=300)
    found = json.loads(out.with_suffix(".json").read_text())
    test = found["results"]["test"]
    assert test["ceiling"]["ndcg@20"] > test["segment only"]["ndcg@20"] > test["popularity"]["ndcg@20"]
    # noise 0: every next item is a liked one, and 320 items leave few liked ones per user
    assert test["ceiling"]["hit@30"] > 0.6
    assert "| ceiling | " in out.with_suffix(".md").read_text()
    # the image tower sees colour, the title tower does not (titles carry no colour word)
    colour = found["probe"]["accuracy"]["colour"]
    assert colour["image"] > 0.5 and colour["title"] < 0.35

"""A dataset in the PerPEFT release layout converts, then trains through the CLI with the same counts."""

from __future__ import annotations

import json
import pickle
import shutil

from recbole_perpeft.cli import main as cli_main
from recbole_perpeft.data.convert import main as convert_main
from recbole_perpeft.data.mmdemo import generate_mmdemo


def _write_release(src_dir, name, tmp_path):
    demo = generate_mmdemo(tmp_path / "demo" / "mm", n_users=150, n_items=200, seed=9)
    rows = [line.split("\t") for line in (demo / "mm.inter").read_text().splitlines()[1:]]
    rows.sort(key=lambda r: float(r[2]))
    users = {u: i + 1 for i, u in enumerate(dict.fromkeys(r[0] for r in rows))}
    items = {it: i + 1 for i, it in enumerate(dict.fromkeys(r[1] for r in rows))}
    (src_dir / f"{name}_images").mkdir(parents=True)
    (src_dir / f"{name}_final.txt").write_text("".join(f"{users[u]} {items[i]}\n" for u, i, _ in rows))
    titles = {}
    for line in (demo / "mm.item").read_text().splitlines()[1:]:
        item, title, image = line.split("\t")
        titles[item] = title
        if image:
            shutil.copy(demo / "images" / image, src_dir / f"{name}_images" / f"{item}.jpg")
    with open(src_dir / f"{name}_item2id_final.pickle", "wb") as handle:
        pickle.dump({index: item for item, index in items.items()}, handle)
    with open(src_dir / f"{name}_texts_final.pickle", "wb") as handle:
        pickle.dump(titles, handle)
    return len(users), len(items), len(rows)


def test_release_layout_converts_and_loads_with_the_same_counts(tmp_path):
    users, items, interactions = _write_release(tmp_path / "release", "toyrel", tmp_path)
    data = tmp_path / "data"
    assert convert_main(["perpeft-release", str(tmp_path / "release"), "toyrel", "--out", str(data),
                         "--trust-pickles"]) == 0
    result = tmp_path / "r.json"
    assert cli_main(["--model=PerPEFT", "--dataset=toyrel", f"--data_path={data}",
                     "--foundation_model=tiny-clip", "--n_groups=1", "--epochs=1", "--train_batch_size=64",
                     "--show_progress=False", "--state=WARNING", f"--result_file={result}"]) == 0
    stats = json.loads(result.read_text())["dataset_stats"]
    assert stats == {"users": users, "items": items, "interactions": interactions}


def test_users_with_fewer_than_three_interactions_are_counted(tmp_path, caplog):
    import logging

    folder = tmp_path / "data" / "short"
    folder.mkdir(parents=True)
    rows = [("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i2"), ("u2", "i3"), ("u2", "i4"),
            ("u3", "i3"), ("u3", "i4"), ("u3", "i1"), ("u4", "i2")]
    (folder / "short.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{t}\n" for t, (u, i) in enumerate(rows)))
    with caplog.at_level(logging.WARNING):
        assert cli_main(["--model=SASRec", "--dataset=short", f"--data_path={tmp_path / 'data'}", "--epochs=1",
                         "--hidden_size=8", "--inner_size=8", "--n_layers=1", "--show_progress=False",
                         "--topk=[2]", "--valid_metric=NDCG@2"]) == 0
    assert "2 users have fewer than 3 interactions" in caplog.text

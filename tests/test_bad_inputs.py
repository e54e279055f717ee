"""Every bad input ends with one line on stderr naming what is wrong, exit code 2, no traceback.

One table, one row per bad input found by probing the CLI and the converter as a new user (and
as an attacker) would. Rows run in-process through the same ``main`` functions the scripts call
(the imports would cost seconds per row as subprocesses); :func:`test_a_whole_process_prints_one_line`
runs a few rows as real processes, with default logging, to check nothing else reaches stderr.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO

from recbole_perpeft.cli import main as cli_main
from recbole_perpeft.data.convert import main as convert_main
from recbole_perpeft.data.mmdemo import generate_mmdemo
from recbole_perpeft.quick_start import run_recbole_perpeft

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
ROWS = "".join(f"u{u}\ti{(u * 7 + k * 3) % 25}\t{u * 10 + k}\n" for u in range(30) for k in range(6))
SASREC = ["--model=SASRec", "--hidden_size=8", "--inner_size=8", "--n_layers=1", "--n_heads=1", "--epochs=1",
          "--show_progress=False", "--plots=False", "--topk=[5]", "--valid_metric=NDCG@5"]
PERPEFT = ["--model=PerPEFT", "--foundation_model=tiny-clip", "--epochs=1", "--show_progress=False", "--plots=False"]
# the line of the first row whose timestamp is 52 (the rows above it are well formed)
LINE_52 = 2 + next(i for i, line in enumerate(ROWS.splitlines()) if line.endswith("\t52"))

# The converter's own argument and input checks are the lead's (issue 15 split); strict, so a fix is noticed.


def _inter_files() -> dict[str, bytes]:
    good = (HEADER + ROWS).encode()
    return {
        "wrong_header": good.replace(b"user_id:token", b"uid:token", 1),
        "no_timestamp": (HEADER.replace("\ttimestamp:float", "")
                         + "".join(line.rsplit("\t", 1)[0] + "\n" for line in ROWS.splitlines())).encode(),
        "text_timestamp": good.replace(b"\t52\n", b"\tlast week\n", 1),
        "nan_timestamp": good.replace(b"\t52\n", b"\tnan\n", 1),
        "empty": b"",
        "header_only": HEADER.encode(),
        "bom": b"\xef\xbb\xbf" + good,
        "latin1": good.replace(b"u5\t", b"u\xe95\t", 1),
        "crlf": good.replace(b"\n", b"\r\n"),
        "short_line": good.replace(b"\t52\n", b"\n", 1),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``data/<case>/<case>.inter`` for every malformed case, ``good``, and a small multimodal ``mm``
    with its ``.item`` missing, empty or header-only variants; ``gz/`` holds converter inputs."""
    root = tmp_path_factory.mktemp("bad_inputs")
    data = root / "data"
    for name, content in {"good": (HEADER + ROWS).encode(), **_inter_files()}.items():
        (data / name).mkdir(parents=True)
        (data / name / f"{name}.inter").write_bytes(content)
    mm = generate_mmdemo(data / "mm", n_users=40, n_items=80, seed=11)
    for variant, item_text in (("mm_no_item", None), ("mm_empty_item", ""),
                               ("mm_header_item", (mm / "mm.item").read_text().splitlines()[0] + "\n")):
        (data / variant).mkdir()
        shutil.copy(mm / "mm.inter", data / variant / f"{variant}.inter")
        if item_text is not None:
            (data / variant / f"{variant}.item").write_text(item_text)
    # the same interactions with every item id permuted: same shapes, other meanings
    permuted = data / "permuted" / "good"
    permuted.mkdir(parents=True)
    swap = {f"i{k}": f"i{(k * 11 + 4) % 25}" for k in range(25)}
    (permuted / "good.inter").write_text(HEADER + "".join(
        f"{u}\t{swap[i]}\t{t}\n" for u, i, t in (line.split("\t") for line in ROWS.splitlines())))
    # converter inputs: a corrupted gzip, and valid files whose image download would run
    gz = root / "gz"
    gz.mkdir()
    header = gzip.compress(b"")[:10]  # a valid gzip header, then bytes that are no deflate stream
    (gz / "corrupt.jsonl.gz").write_bytes(header + b"corrupt-body-here-xxxxxxxx")
    (gz / "reviews.jsonl").write_text('{"user_id": "u1", "parent_asin": "A", "timestamp": 1000}\n'
                                      '{"user_id": "u2", "parent_asin": "A", "timestamp": 2000}\n')
    (gz / "meta.jsonl").write_text(json.dumps({"parent_asin": "A", "title": "x",
                                               "images": [{"large": "http://127.0.0.1:9/a.jpg"}]}) + "\n")
    return root


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory) -> dict[str, Path]:
    """A trained SASRec checkpoint on ``good``, a GRU4Rec one, and a truncated copy."""
    saved = tmp_path_factory.mktemp("saved")
    settings = {"hidden_size": 8, "inner_size": 8, "n_layers": 1, "n_heads": 1, "embedding_size": 8, "epochs": 1,
                "show_progress": False, "state": "ERROR", "plots": False, "data_path": str(data / "data"),
                "checkpoint_dir": str(saved), "topk": [5], "valid_metric": "NDCG@5"}
    sasrec = Path(run_recbole_perpeft("SASRec", "good", config_dict=settings)["checkpoint"])
    gru = Path(run_recbole_perpeft("GRU4Rec", "good", config_dict=settings)["checkpoint"])
    truncated = saved / "truncated.last.pth"
    whole = sasrec.read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    return {"sasrec": sasrec, "gru4rec_last": Path(str(gru)[: -len(".pth")] + ".last.pth"), "truncated": truncated}


@dataclass(frozen=True)
class Case:
    """One bad input: the command's arguments (built from the fixtures), and what the line must say."""

    name: str
    args: Callable[[Path, dict[str, Path]], list[str]]
    says: str
    tool: str = "cli"  # or "convert"
    env: dict[str, str] = field(default_factory=dict)
    marks: tuple = ()


def _merged(*arguments: str) -> list[str]:
    """``--KEY=VALUE`` arguments, a later one replacing an earlier one of the same key."""
    by_key = {argument.split("=", 1)[0]: argument for argument in arguments}
    return list(by_key.values())


def _dataset(name: str) -> Callable[[Path, dict], list[str]]:
    return lambda d, c: _merged(*SASREC, f"--dataset={name}", f"--data_path={d / 'data'}")


def _perpeft(*extra: str, dataset: str = "mm") -> Callable[[Path, dict], list[str]]:
    return lambda d, c: _merged(*PERPEFT, f"--dataset={dataset}", f"--data_path={d / 'data'}", *extra)


def _good(*extra: str) -> Callable[[Path, dict], list[str]]:
    return lambda d, c: _merged(*_dataset("good")(d, c), *extra)


CASES = [
    # .inter files
    Case("inter: wrong header", _dataset("wrong_header"), "wrong_header.inter:1: no 'user_id' column"),
    Case("inter: no timestamp column", _dataset("no_timestamp"), "no_timestamp.inter:1: no 'timestamp' column"),
    Case("inter: text timestamp", _dataset("text_timestamp"), f"text_timestamp.inter:{LINE_52}: column 'timestamp' (float)"),
    Case("inter: nan timestamp", _dataset("nan_timestamp"), f"nan_timestamp.inter:{LINE_52}: 'timestamp' is 'nan'"),
    Case("inter: empty", _dataset("empty"), "empty.inter: the file is empty"),
    Case("inter: header only", _dataset("header_only"), "header_only.inter: a header but no interaction"),
    Case("inter: UTF-8 BOM", _dataset("bom"), "bom.inter:1: the file starts with a UTF-8 byte-order mark"),
    Case("inter: non-UTF-8 bytes", _dataset("latin1"), "latin1.inter:32: bytes that are not utf-8"),
    Case("inter: CRLF line ends", _dataset("crlf"), "crlf.inter:1: Windows line endings"),
    Case("inter: missing field", _dataset("short_line"), f"short_line.inter:{LINE_52}: 2 field(s), the header has 3"),
    # .item files (multimodal models)
    Case("item: missing", _perpeft(dataset="mm_no_item"), "mm_no_item.item not found"),
    Case("item: empty", _perpeft(dataset="mm_empty_item"), "mm_empty_item.item: the item file is empty"),
    Case("item: header only", _perpeft(dataset="mm_header_item"), "mm_header_item.item: no item line"),
    # config values (checked by recbole_perpeft/config_rules.py as the config is built)
    Case("--epochs=0", _good("--epochs=0"), "invalid configuration: epochs must be"),
    Case("--epochs=abc", _good("--epochs=abc"), "invalid configuration: epochs must be"),
    Case("--train_batch_size=0", _good("--train_batch_size=0"), "invalid configuration: train_batch_size must be"),
    Case("--learning_rate=-1", _good("--learning_rate=-1"), "invalid configuration: learning_rate must be"),
    Case("--peft_type=nonsense", _perpeft("--peft_type=nonsense"), "invalid configuration: peft_type must be"),
    Case("--peft_config=hello", _perpeft("--peft_config=hello"), "invalid configuration: peft_config must be"),
    Case("--n_groups above the users", _perpeft("--n_groups=1000"), "n_groups=1000 is more than the 40 users"),
    Case("--max_image_pixels=0", _perpeft("--max_image_pixels=0"), "invalid configuration: max_image_pixels must be"),
    # config files and flags
    Case("malformed --config_files YAML", lambda d, c: [*_good()(d, c), f"--config_files={d / 'broken.yaml'}"],
         "broken.yaml:3: invalid YAML (expected ',' or ']', but got '<stream end>'; while parsing a flow sequence "
         "opened at line 2)"),
    Case("argument without a value", _good("--epochs"), "malformed argument '--epochs'"),
    # foundation models
    Case("--foundation_model=/nonexistent", _perpeft("--foundation_model=/nonexistent"),
         "foundation model path /nonexistent does not exist"),
    Case("hub id, HF_HUB_OFFLINE", _perpeft("--foundation_model=some-org/some-model"),
         "'some-org/some-model' is not in the Hugging Face cache and cannot be downloaded (HF_HUB_OFFLINE is set)",
         env={"HF_HUB_OFFLINE": "1"}),
    Case("hub id, no network", _perpeft("--foundation_model=some-org/some-model"), "127.0.0.1:9 cannot be reached",
         env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": ""}),
    Case("default CLIP, offline", _perpeft("--foundation_model=auto"),
         "'openai/clip-vit-base-patch32' is not in the Hugging Face cache", env={"HF_HUB_OFFLINE": "1"}),
    # checkpoints
    Case("--resume with another model's file", lambda d, c: [*_good()(d, c), f"--resume={c['gru4rec_last']}"],
         "holds model 'GRU4Rec', not 'SASRec'"),
    Case("--resume with a truncated file", lambda d, c: [*_good()(d, c), f"--resume={c['truncated']}"],
         "cannot read checkpoint"),
    Case("--resume=latest with none of this run", _good("--resume=latest"), "no resume file of this run"),
    Case("--recommend on other item ids",
         lambda d, c: [f"--recommend={c['sasrec']}", "--history=i1 i2", f"--data_path={d / 'data' / 'permuted'}"],
         "other item ids than the dataset loaded now"),
    # converter
    Case("convert: corrupted .gz",
         lambda d, c: ["amazon2023", "--reviews", str(d / "gz" / "corrupt.jsonl.gz"), "--meta",
                       str(d / "gz" / "corrupt.jsonl.gz"), "--name", "x", "--out", str(d / "out"), "--no-images"],
         "corrupt.jsonl.gz", tool="convert"),
    Case("convert: --timeout -1",
         lambda d, c: ["amazon2023", "--reviews", str(d / "gz" / "reviews.jsonl"), "--meta", str(d / "gz" / "meta.jsonl"),
                       "--name", "t", "--out", str(d / "out"), "--kcore", "1", "--timeout", "-1", "--quiet"],
         "timeout", tool="convert"),
]


def _environment(monkeypatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        if value:
            monkeypatch.setenv(key, value)
        else:
            monkeypatch.delenv(key, raising=False)
    if "HF_ENDPOINT" in env:  # read by huggingface_hub at import time
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", env["HF_ENDPOINT"])


def _check_one_line(code: int, err: str, says: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith("error: ") and says in lines[0], lines[0]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_bad_input_is_one_line_and_exit_code_2(case, data, checkpoints, monkeypatch, capsys):
    (data / "broken.yaml").write_text("epochs: 2\ntopk: [10, 20\n")
    _environment(monkeypatch, case.env)
    capsys.readouterr()
    code = (cli_main if case.tool == "cli" else convert_main)(case.args(data, checkpoints))
    _check_one_line(code, capsys.readouterr().err, case.says)


def test_nothing_is_written_into_saved_by_a_refused_resume(data, checkpoints, tmp_path, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in checkpoints["sasrec"].parent.iterdir()}
    assert cli_main([*_good()(data, checkpoints), f"--checkpoint_dir={checkpoints['sasrec'].parent}",
                     f"--resume={checkpoints['gru4rec_last']}"]) == 2
    assert {p.name: p.stat().st_mtime_ns for p in checkpoints["sasrec"].parent.iterdir()} == before


@pytest.mark.parametrize("name", ["inter: wrong header", "hub id, no network"])
def test_a_whole_process_prints_one_line(name, data, checkpoints, tmp_path):
    """As a real process with RecBole's default (INFO) logging: stderr holds the one line only."""
    case = next(c for c in CASES if c.name == name)
    env = {**os.environ, "PYTHONPATH": str(REPO), **case.env}
    args = [a for a in case.args(data, checkpoints) if not a.startswith("--state=")]
    completed = subprocess.run([sys.executable, str(REPO / "run_recbole_perpeft.py"), *args], cwd=tmp_path,
                               env={k: v for k, v in env.items() if v}, capture_output=True, text=True, timeout=300)
    _check_one_line(completed.returncode, completed.stderr, case.says)


def test_an_unknown_key_is_a_one_line_warning_with_the_closest_key(data, checkpoints, capsys):
    assert cli_main([*_dataset("wrong_header")(data, checkpoints), "--n_group=2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == ("warning: unknown config key 'n_group' is ignored (did you mean 'n_groups'? "
                        "no RecBole or plugin component reads it)")
    assert lines[1].startswith("error: ") and len(lines) == 2

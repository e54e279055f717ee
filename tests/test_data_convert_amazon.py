"""amazon2023 converter against a real HTTP server on 127.0.0.1 (downloads, resume, k-core)."""

from __future__ import annotations

import gzip
import io
import json
import re
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from recbole_perpeft.data.content import load_item_content
from recbole_perpeft.data.convert import choose_image_url, main
from recbole_perpeft.data.download import download_images, safe_image_name


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def _png_rgba() -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (20, 20), (0, 128, 255, 100)).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (a decompression-bomb lookalike)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


class _Server:
    """Serves ``routes[path] = (status, body, send_length)``; counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, bool]] = {}
        self.hits: dict[str, int] = {}
        self.flaky_left = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server calls do_GET
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path == "/flaky.jpg" and server.flaky_left > 0:
                    server.flaky_left -= 1
                    self.send_error(503)
                    return
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "ftp://127.0.0.1/elsewhere.jpg")
                    self.end_headers()
                    return
                status, body, send_length = server.routes.get(
                    self.path, (404, b"", True)
                )
                if status != 200:
                    self.send_error(status)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if send_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    big = _jpeg((9, 9, 9), (600, 600)) + b"\0" * 60_000  # > the 50 kB cap used below
    s.routes = {
        "/a_main.jpg": (200, _jpeg((255, 0, 0)), True),
        "/a_other.jpg": (200, _jpeg((0, 0, 0)), True),
        "/b_hires.png": (200, _png_rgba(), True),
        "/big.jpg": (200, big, True),
        "/big_nolength.jpg": (200, big, False),
        "/bomb.png": (200, _png_header_only(100_000, 100_000), True),
        "/wide.jpg": (200, _jpeg((0, 255, 0), (400, 300)), True),
        "/garbage.jpg": (200, b"<html>not an image</html>", True),
        "/flaky.jpg": (200, _jpeg((0, 0, 255)), True),
    }
    s.flaky_left = 2
    yield s
    s.close()


CORE_USERS = ["U1", "U2", "U3"]
# item -> (image entries of the metadata, expected outcome)
CORE_ITEMS = ["A", "B", "F", "G", "H", "I", "J", "W", "K", "M", "N", "Q"]


def _meta(url: str) -> list[dict]:
    return [
        {"parent_asin": "A", "title": "Red\tthing\nwith newline", "images": [
            {"variant": "PT01", "large": f"{url}/a_other.jpg"},
            {"variant": "MAIN", "large": f"{url}/a_main.jpg", "hi_res": f"{url}/a_other.jpg"}]},
        {"parent_asin": "B", "title": "Blue png 16&quot; Black &amp; Decker", "images": [{"variant": "MAIN", "large": None, "hi_res": f"{url}/b_hires.png", "thumb": f"{url}/x.jpg"}]},
        {"parent_asin": "F", "title": "Not found", "images": [{"variant": "MAIN", "large": f"{url}/missing.jpg"}]},
        {"parent_asin": "G", "title": "Too big", "images": [{"variant": "MAIN", "large": f"{url}/big.jpg"}]},
        {"parent_asin": "H", "title": "Too big, no length", "images": [{"variant": "MAIN", "large": f"{url}/big_nolength.jpg"}]},
        {"parent_asin": "I", "title": "FTP", "images": [{"variant": "MAIN", "large": "ftp://127.0.0.1/x.jpg"}]},
        {"parent_asin": "J", "title": "Bomb", "images": [{"variant": "MAIN", "large": f"{url}/bomb.png"}]},
        {"parent_asin": "W", "title": "Too many pixels for the cap", "images": [{"variant": "MAIN", "large": f"{url}/wide.jpg"}]},
        {"parent_asin": "K", "title": "Garbage", "images": [{"variant": "MAIN", "large": f"{url}/garbage.jpg"}]},
        {"parent_asin": "M", "title": "Flaky server", "images": [{"variant": "MAIN", "large": f"{url}/flaky.jpg"}]},
        {"parent_asin": "M", "title": "duplicate meta row", "images": []},
        {"parent_asin": "N", "title": "", "images": []},
        # Q has no metadata at all
        {"parent_asin": "D", "title": "dropped by the k-core", "images": []},
    ]  # fmt: skip


def _reviews() -> list[str]:
    rows: list[dict] = []
    t = 1_600_000_000_000
    for k, item in enumerate(CORE_ITEMS):
        for j, user in enumerate(CORE_USERS):
            rows.append(
                {
                    "user_id": user,
                    "parent_asin": item,
                    "timestamp": t + 1000 * (10 * k + j),
                    "rating": 5.0,
                }
            )
    # the cascade of the 2-core: U4-E go first (degree 1), then D, then U5's C, then U6's C
    rows += [
        {"user_id": "U4", "parent_asin": "E", "timestamp": t + 5},
        {"user_id": "U5", "parent_asin": "C", "timestamp": t + 6},
        {"user_id": "U5", "parent_asin": "D", "timestamp": t + 7},
        {"user_id": "U6", "parent_asin": "C", "timestamp": t + 8},
        {"user_id": "U6", "parent_asin": "A", "timestamp": t + 9},
    ]
    # a duplicate (U1, A) earlier than the original: the earliest one wins
    rows.append({"user_id": "U1", "parent_asin": "A", "timestamp": t - 7000})
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, '{"user_id": "U9", "parent_asin": broken json')
    lines.insert(5, json.dumps({"user_id": "U9", "timestamp": t}))  # no parent_asin
    lines.insert(6, "[1, 2]")  # JSON but not an object
    return lines


@pytest.fixture
def raw_files(tmp_path: Path, server: _Server) -> tuple[Path, Path]:
    reviews = tmp_path / "Toys_and_Games.jsonl.gz"
    with gzip.open(reviews, "wt") as fh:
        fh.write("\n".join(_reviews()) + "\n")
    meta = tmp_path / "meta_Toys_and_Games.jsonl"
    meta.write_text(
        "\n".join(json.dumps(m) for m in _meta(server.url)) + "\n{truncated\n"
    )
    return reviews, meta


def _counts(summary: str) -> dict[str, int]:
    """The ``  name   value`` lines of the converter's summary."""
    return {
        m[1]: int(m[2])
        for m in re.finditer(r"^  (\S.*?)\s{2,}(\d+)$", summary, re.MULTILINE)
    }


def _run(reviews: Path, meta: Path, out: Path, *extra: str) -> int:
    return main(
        ["amazon2023", "--reviews", str(reviews), "--meta", str(meta), "--name", "toys", "--out", str(out),
         "--kcore", "2", "--workers", "4", "--timeout", "5", "--retries", "2", "--backoff", "0.01",
         "--max-image-bytes", "50000", "--max-image-pixels", "100000", "--quiet", *extra]
    )  # fmt: skip


def test_amazon2023_end_to_end(
    tmp_path: Path,
    raw_files: tuple[Path, Path],
    server: _Server,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reviews, meta = raw_files
    out = tmp_path / "data"
    assert _run(reviews, meta, out) == 0
    summary = capsys.readouterr().out
    d = out / "toys"

    # k-core by hand: only the 3 core users x 12 core items survive (U1's duplicate A removed)
    inter = (d / "toys.inter").read_text().splitlines()
    assert inter[0] == "user_id:token\titem_id:token\ttimestamp:float"
    rows = [line.split("\t") for line in inter[1:]]
    assert {(u, i) for u, i, _ in rows} == {
        (u, i) for u in CORE_USERS for i in CORE_ITEMS
    }
    assert len(rows) == 36
    times = [float(t) for _, _, t in rows]
    assert times == sorted(times)  # time-ordered
    assert [t for u, i, t in rows if (u, i) == ("U1", "A")] == [
        "1599999993"
    ]  # the earliest of the duplicates
    c = _counts(summary)
    assert c["review lines malformed json"] == 2  # broken JSON and a JSON array
    assert c["reviews missing fields"] == 1
    assert c["duplicate user item removed"] == 1
    assert (
        c["kcore passes"] == 5
    )  # 4 removal passes (E/U4; D; U5's C; U6's C and A) + 1 stable
    assert c["interactions removed by kcore"] == 5
    assert (c["users"], c["items"], c["interactions"]) == (3, 12, 36)
    assert c["meta lines malformed json"] == 1 and c["meta duplicate items"] == 1
    assert c["items without metadata"] == 1 and c["items without title"] == 2
    assert (
        c["images downloaded"] == 3
        and c["images failed"] == 7
        and c["items without image"] == 9
    )
    assert (
        "python run_recbole_perpeft.py --model=PerPEFT --dataset=toys --data_path="
        in summary
    )

    # items and images
    item_lines = (d / "toys.item").read_text().splitlines()
    assert item_lines[0] == "item_id:token\ttitle:token_seq\timage:token"
    items = {line.split("\t")[0]: line.split("\t")[1:] for line in item_lines[1:]}
    assert set(items) == set(CORE_ITEMS)
    assert items["A"] == ["Red thing with newline", "A.jpg"]
    assert items["B"] == ["Blue png 16\" Black & Decker", "B.jpg"]  # HTML entities unescaped
    assert items["M"] == [
        "Flaky server",
        "M.jpg",
    ]  # retried past two 503s; first meta row wins
    for failed in ("F", "G", "H", "I", "J", "W", "K", "N", "Q"):
        assert items[failed][1] == "", failed
    assert items["Q"][0] == "" and items["N"][0] == ""
    with Image.open(d / "images" / "A.jpg") as img:
        assert (
            img.format == "JPEG" and img.mode == "RGB" and img.getpixel((5, 5))[0] > 200
        )  # MAIN variant
    with Image.open(d / "images" / "B.jpg") as img:
        assert img.format == "JPEG" and img.mode == "RGB"  # RGBA PNG re-encoded
    assert sorted(p.name for p in (d / "images").iterdir()) == [
        "A.jpg",
        "B.jpg",
        "M.jpg",
    ]  # no temp files left
    assert server.hits.get("/a_other.jpg") is None and server.hits["/flaky.jpg"] == 3

    failures = (d / "download_failures.tsv").read_text().splitlines()
    assert failures[0] == "item\turl\treason"
    reasons = {line.split("\t")[0]: line.split("\t")[2] for line in failures[1:]}
    assert set(reasons) == {"F", "G", "H", "I", "J", "W", "K"}
    assert reasons["F"].startswith("http_404")
    assert reasons["G"].startswith("too_large") and "Content-Length" in reasons["G"]
    assert reasons["H"].startswith("too_large")  # caught while streaming
    assert reasons["I"].startswith("refused_url")
    assert reasons["J"].startswith("too_many_pixels") and reasons["W"].startswith(
        "too_many_pixels"
    )
    assert reasons["K"].startswith("undecodable")
    assert server.hits["/missing.jpg"] == 1  # a 404 is not retried

    # written atomically, yet readable by others as any file the umask allows (0644 under 022)
    from conftest import file_mode_for_umask

    for written in ("toys.inter", "toys.item", "download_failures.tsv", "images/A.jpg", "images/B.jpg"):
        assert file_mode_for_umask(d / written), written

    # the result loads as item content
    content = load_item_content(d, "toys", ["[PAD]", *CORE_ITEMS])
    assert content.has_image.sum() == 3 and content.report["image_missing"] == 0

    # resume: the second run downloads nothing that is already there
    hits_before = dict(server.hits)
    assert _run(reviews, meta, out) == 0
    summary2 = capsys.readouterr().out
    c2 = _counts(summary2)
    assert (
        c2["images downloaded"] == 0
        and c2["images already present"] == 3
        and c2["images failed"] == 7
    )
    for path in ("/a_main.jpg", "/b_hires.png", "/flaky.jpg"):
        assert server.hits[path] == hits_before[path], path
    assert (d / "toys.inter").read_text().splitlines() == inter


def test_no_images_and_bad_inputs(
    tmp_path: Path, raw_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    reviews, meta = raw_files
    out = tmp_path / "data"
    assert _run(reviews, meta, out, "--no-images") == 0
    assert not (out / "toys" / "images").exists()
    assert all(
        line.endswith("\t")
        for line in (out / "toys" / "toys.item").read_text().splitlines()[1:]
    )
    capsys.readouterr()
    assert _run(tmp_path / "nope.jsonl", meta, out) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "nope.jsonl" in err and "Traceback" not in err
    assert (
        main(
            [
                "amazon2023",
                "--reviews",
                str(reviews),
                "--meta",
                str(meta),
                "--name",
                "../evil",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "dataset name" in capsys.readouterr().err
    assert _run(reviews, meta, out, "--kcore", "50") == 2
    assert "smaller --kcore" in capsys.readouterr().err


def test_cli_module_exits_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "recbole_perpeft.data.convert", "amazon2023", "--reviews", str(tmp_path / "x.jsonl"),
         "--meta", str(tmp_path / "y.jsonl"), "--name", "x", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (
        proc.returncode == 2
        and "error:" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_choose_image_url() -> None:
    assert (
        choose_image_url(
            [
                {"variant": "PT01", "large": "u1"},
                {"variant": "MAIN", "thumb": "u3", "hi_res": "u2"},
            ]
        )
        == "u2"
    )
    assert choose_image_url([{"variant": "PT01", "thumb": "t"}, {"large": "l"}]) == "t"
    assert (
        choose_image_url({"large": ["l0", "l1"], "variant": ["PT01", "MAIN"]}) == "l1"
    )
    assert (
        choose_image_url([]) is None
        and choose_image_url(None) is None
        and choose_image_url([{"variant": "MAIN"}]) is None
    )


def test_safe_image_name() -> None:
    assert safe_image_name("B00ABC-1_x.y") == "B00ABC-1_x.y.jpg"
    names = {
        safe_image_name(x)
        for x in ("a/b", "a_b", "a b", "..", ".hidden", "", "../../etc/passwd")
    }
    assert len(names) == 7
    for name in names:
        assert (
            not name.startswith(".")
            and "/" not in name
            and ".." not in name.split(".jpg")[0].split("_")[0]
        )
    assert len(safe_image_name("x" * 500)) < 130


def test_redirect_to_non_http_is_refused(tmp_path: Path, server: _Server) -> None:
    report = download_images(
        [("R", f"{server.url}/redirect"), ("OK", f"{server.url}/a_main.jpg")],
        tmp_path / "images",
        workers=2,
        backoff=0.01,
        failures_path=tmp_path / "failures.tsv",
        show_progress=False,
    )
    assert report.downloaded == 1 and dict(report.failed) == {"refused_url": 1}
    assert report.files == {"OK": "OK.jpg"}
    assert "ftp://" in (tmp_path / "failures.tsv").read_text()

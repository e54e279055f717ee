"""Smoke runs of the benchmark scripts at toy size: they run and write sane tables."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_encoder_backends_benchmark_quick(tmp_path):
    out = tmp_path / "bench"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "encoder_backends.py"), "--quick",
         "--backends", "lora", "iisan", "--out", str(out), "--workdir", str(tmp_path / "work")],
        check=True, capture_output=True, text=True, timeout=600,
    )
    payload = json.loads(out.with_suffix(".json").read_text())
    backends = {row["backend"]: row for row in payload["backends"]}
    assert set(backends) == {"lora", "iisan"}
    for row in backends.values():
        assert row["seconds_per_epoch"] > 0 and row["peak_memory_mb"] > 0
        assert 0 < row["peft_params"] < row["foundation_params"]
    content = payload["content_path"]
    assert content["cached_seconds_per_batch"] > 0 and content["speedup_batched_eval"] > 0
    assert "| lora |" in out.with_suffix(".md").read_text()

"""Smoke run of benchmarks/overhead.py on the tiny CLIP: the counts add up."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_overhead_benchmark_tiny(tmp_path):
    out = tmp_path / "overhead"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "overhead.py"), "--foundation", "tiny-clip", "--groups", "4",
         "--backends", "lora", "ia3", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    rows = {row["peft_type"]: row for row in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert set(rows) == {"lora", "ia3"}
    for row in rows.values():
        assert 0 < row["peft_params_per_group"] < row["foundation_params"]
        share = 4 * row["peft_params_per_group"] / row["foundation_params"]
        assert abs(row["groups_peft_share_of_foundation"] - share) < 1e-12
    # (IA)3 scales activations: far fewer parameters than LoRA's low-rank matrices
    assert rows["ia3"]["peft_params_per_group"] < rows["lora"]["peft_params_per_group"]
    assert "| lora |" in out.with_suffix(".md").read_text()

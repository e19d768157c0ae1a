"""The benchmark runner's code paths (quick mode on a tiny UNet): it must run and write its report.
Nothing about time is asserted here; the numbers live in bench/RESULTS.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_writes_a_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COMFYUI_PATH"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--bases", "sd1", "--out", str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "RESULTS-quick.md").read_text()
    for heading in ("Trainable parameters", "Per layer: base output + ΔW·x", "Training step: sd1 UNet"):
        assert heading in report
    for config in ("KronA (64, 8) efficient", "KronA (64, 8) materialised", "LyCORIS LoKr bypass", "PEFT LoRA r4", "no adapter"):
        assert f"| {config} |" in report
    assert "| sd1 | 128 | 248,176 | 797,184 |" in report
    assert (tmp_path / "step-times-quick.png").stat().st_size > 1000


def test_quick_flow_block_bench_writes_a_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "flow_blocks.py"), "--quick", "--out", str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "FLOW_BLOCKS-quick.md").read_text()
    for block in ("Flux.1 double block", "SD3.5 Large joint block"):
        assert f"## {block} (64 wide" in report
        assert f"| {block}: step ≤ 1.0× LoRA r16 |" in report
    for config in ("KronA (64, 8)", "PEFT LoRA r16", "LyCORIS LoKr", "LyCORIS LoKr bypass", "no adapter"):
        assert f"| {config} |" in report


@pytest.mark.slow
def test_quick_quality_bench_writes_a_report(tmp_path):
    """bench/quality.py on the shipped world base, 2 rates × 1 seed × 4 steps: every method and the report."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--quick", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "QUALITY-quick.md").read_text()
    from krona_core.world.personalise import RECIPE

    for method in (f"KronA ({RECIPE.a1}, {RECIPE.a2})", "LoRA r4", "(≈ KronA's count)", "LyCORIS LoKr"):
        assert f"| {method}" in report or f"{method} |" in report, method
    assert (tmp_path / "quality-quick.png").stat().st_size > 1000

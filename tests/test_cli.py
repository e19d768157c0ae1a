"""The CLI as users run it: `python -m krona_core demo` and `info`, and one-line refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "krona_core", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_demo_end_to_end_then_info(tmp_path):
    run = cli("demo", "--out", str(tmp_path / "out"), "--steps", "30", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "efficient vs merged forward" in run.stdout
    # the parameter table on the real architectures carries the DESIGN.md figures
    assert "| SD1.5 | 128 | 248,176 | 797,184 |" in run.stdout
    files = sorted((tmp_path / "out").glob("*.krona.safetensors"))
    assert [f.name for f in files] == ["krona-demo_00001.krona.safetensors"]
    again = cli("demo", "--out", str(tmp_path / "out"), "--steps", "2", cwd=tmp_path)
    assert again.returncode == 0
    assert (tmp_path / "out" / "krona-demo_00002.krona.safetensors").exists()  # never overwritten

    info = cli("info", str(files[0]), cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "trigger words:  sks" in info.stdout
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in info.stdout
    assert "total ΔW norm" in info.stdout
    piped = subprocess.Popen([sys.executable, "-m", "krona_core", "info", str(files[0])], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    piped.stdout.close()  # `krona info … | head`: the reader went away before the first line
    err = piped.stderr.read()
    assert b"Traceback" not in err and b"BrokenPipe" not in err and piped.wait(timeout=120) != 0
    as_json = cli("info", "--json", str(files[0]), cwd=tmp_path)
    import json

    parsed = json.loads(as_json.stdout)
    assert parsed["metadata"]["krona.trigger_words"] == '["sks"]'


@pytest.mark.parametrize("content", [b"", b"\x80\x04junk", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"])
def test_info_refuses_bad_files_with_one_line(tmp_path, content):
    bad = tmp_path / "bad.krona.safetensors"
    bad.write_bytes(content)
    run = cli("info", str(bad), cwd=tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.krona.safetensors" in lines[0]

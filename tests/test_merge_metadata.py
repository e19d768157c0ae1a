"""Merged KronA files keep what their sources record: base model, targets, trigger words (also in
the kohya / modelspec keys other tools read), and each source's training record in the provenance;
written to disk and read back, nothing of it becomes an empty list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import krona_core
from krona_core.convert.merge import merge_files

ROOT = Path(__file__).resolve().parents[1]


def _check(merged, one, two) -> None:
    assert one.base_model == "sd1" and merged.base_model == "sd1"
    assert one.targets == ["attn"] and two.targets == ["*attn1.to_q"]
    assert merged.targets == ["attn", "*attn1.to_q"]
    assert merged.trigger_words == ["sks", "ohwx"]
    assert merged.metadata["modelspec.trigger_phrase"] == "sks, ohwx"
    assert merged.metadata["ss_base_model_version"] == one.metadata["ss_base_model_version"]
    assert set(json.loads(merged.metadata["ss_tag_frequency"]).popitem()[1]) == {"sks", "ohwx"}
    sources = json.loads(merged.metadata["krona.provenance"])["merged_from"]
    assert [(s["name"], s["weight"], s["base_model"], s["targets"], s["trigger_words"]) for s in sources] == [
        ("one", 0.5, "sd1", ["attn"], ["sks"]), ("two", 2.0, "sd1", ["*attn1.to_q"], ["ohwx", "sks"])]
    assert sources[0]["training"] == {"steps": 500, "seed": 0} and sources[1]["training"] is None


def test_merge_keeps_the_sources_metadata(tmp_path, two_krona_files):
    one, two = two_krona_files
    result = merge_files([one, two], [0.5, 2.0])
    _check(result.file, one, two)
    path = krona_core.files.writer.write(tmp_path / "ab.krona.safetensors", result.file.modules, result.file.metadata)
    _check(krona_core.load(path), one, two)  # as written and read back


def test_the_merge_command_keeps_them_too(tmp_path, two_krona_files):
    one, two = two_krona_files
    out = tmp_path / "ab.krona.safetensors"
    run = subprocess.run([sys.executable, "-m", "krona_core", "merge", one.path, two.path, "--weights", "0.5,2",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    _check(krona_core.load(out), one, two)
    assert "merging" in run.stderr  # the progress bar

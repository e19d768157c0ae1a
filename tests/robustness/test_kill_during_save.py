"""Atomic writes under SIGKILL: a process saving adapter files in a loop (new names and
overwrites) is killed at random moments; after every kill each visible file loads and holds
exactly what was saved — never a truncated or mixed file. The count is printed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from krona_core.files.reader import read

KILLS = 30
ROOT = Path(__file__).resolve().parents[2]
WRITER = """
import sys, torch
from krona_core.files.writer import build_metadata, write
folder = sys.argv[1]
g = torch.Generator().manual_seed(0)
modules = {f"lora_unet_block_{i}_to_q": (torch.randn(64, 8, generator=g), torch.randn(20, 160, generator=g)) for i in range(60)}
meta = build_metadata(modules, base_model="sd1", title="k", date="2026-01-01T00:00:00+00:00")
i = 0
while True:
    write(f"{folder}/new_{sys.argv[2]}_{i:05d}.krona.safetensors", modules, meta)
    write(f"{folder}/same.krona.safetensors", modules, meta, overwrite=True)
    i += 1
"""


@pytest.mark.slow
def test_sigkill_while_saving_never_leaves_a_truncated_file(tmp_path):
    rng = random.Random(15)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    expected, checked = None, 0
    for kill in range(KILLS):
        before = len(list(tmp_path.glob("new_*")))
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(kill)], env=env)
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("new_*"))) == before:  # this process is writing now
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for path in tmp_path.glob("*.krona.safetensors"):
            file = read(path)  # raises on a truncated or mixed file
            factors = {k: v[0] for k, v in file.modules.items()}
            expected = expected or factors
            assert factors.keys() == expected.keys() and all(torch.equal(factors[k], expected[k]) for k in factors)
            checked += 1
            if path.name.startswith("new_"):
                path.unlink()  # checked: keep each round's reading short
    visible = checked
    print(f"\n{KILLS} SIGKILLs while saving: {visible} files checked complete; "
          f"{len([p for p in tmp_path.iterdir() if p.name.startswith('.')])} temporary files left behind")
    assert visible > KILLS  # the kills landed while files were being written

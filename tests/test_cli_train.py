"""`python -m krona_core train` on local bases: a diffusers folder, a single-file checkpoint, and two
CPU processes through `accelerate launch` (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers.tiny_diffusers import write_char_tokenizer, write_tiny_diffusers  # noqa: E402
from helpers.subject_images import write_subject_pngs  # noqa: E402

import krona_core  # noqa: E402

ROOT = _TESTS.parent


def run(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    return write_tiny_diffusers(tmp_path_factory.mktemp("base") / "tiny-sd")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_subject_pngs(folder, 3, 48, seed=4, stem="img")
    (folder / "img1.txt").write_text("a close-up photo of sks toy", encoding="utf-8")
    return folder


def test_train_on_a_diffusers_folder_with_checkpoints_previews_and_resume(tiny_base, images, tmp_path):
    out = tmp_path / "me.krona.safetensors"
    common = ["-m", "krona_core", "train", "--base", str(tiny_base), "--images", str(images),
              "--instance-prompt", "a photo of sks toy", "--steps", "6", "--grad-accum", "1", "--a1", "8", "--a2", "4",
              "--resolution", "32", "--device", "cpu", "--trigger-words", "sks toy"]
    result = run(*common, "--out", str(out), "--checkpoint-every", "3", "--validate-every", "3",
                 "--class-prompt", "a photo of a toy", "--num-class-images", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    file = krona_core.load(out)
    assert file.trigger_words == ["sks toy"]
    record = file.training
    assert record["steps"] == 6 and record["prior_preservation"] and record["class_images"] == 2
    assert record["instance_images"] == 3 and len(record["dataset_hash"]) == 64
    assert (tmp_path / "me.loss.png").is_file()
    assert sorted(p.name for p in tmp_path.glob("me.preview_*.png")) == ["me.preview_000003.png", "me.preview_000006.png"]
    checkpoint = tmp_path / "me.checkpoints" / "step_000003.krona.safetensors"
    assert checkpoint.is_file()

    # the same file is refused without --overwrite; resume from the checkpoint finishes the run
    again = run(*common, "--out", str(out), cwd=tmp_path)
    assert again.returncode != 0 and "exists" in again.stderr
    resumed_out = tmp_path / "resumed.krona.safetensors"
    resumed = run(*common, "--out", str(resumed_out), "--resume", str(checkpoint),
                  "--class-prompt", "a photo of a toy", "--num-class-images", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = krona_core.load(out), krona_core.load(resumed_out)
    for key in a.modules:  # the resumed run ends where the uninterrupted one did
        assert torch.equal(a.modules[key][0], b.modules[key][0]) and torch.equal(a.modules[key][1], b.modules[key][1])


def test_train_on_a_single_file_checkpoint(images, tmp_path):
    from helpers.tiny_comfy import cached_checkpoint

    tokenizer = write_char_tokenizer(tmp_path / "tokenizer")
    out = tmp_path / "single.krona.safetensors"
    result = run("-m", "krona_core", "train", "--base", str(cached_checkpoint("sd15")), "--tokenizer", str(tokenizer),
                 "--images", str(images), "--instance-prompt", "a photo of sks toy", "--steps", "2", "--grad-accum", "1",
                 "--resolution", "64", "--device", "cpu", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    file = krona_core.load(out)
    # (64, 8) on the 320-wide attention of the tiny SD1.5 UNet; kohya diffusers-style names
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0") for k in file.modules)
    assert {tuple(w1.shape) for w1, _ in file.modules.values()} == {(64, 8)}


def test_two_cpu_processes_through_accelerate(tiny_base, images, tmp_path):
    out = tmp_path / "ddp.krona.safetensors"
    # accelerate's --cpu multi-process path needs MPI; --multi_gpu starts torchrun, and the trainer's
    # Accelerator(cpu=True) then joins the processes over gloo
    result = run("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                 "--mixed_precision", "no", "--dynamo_backend", "no",
                 "-m", "krona_core", "train", "--base", str(tiny_base), "--images", str(images),
                 "--instance-prompt", "a photo of sks toy", "--steps", "3", "--grad-accum", "1", "--a1", "8", "--a2", "4",
                 "--resolution", "32", "--device", "cpu", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    log = result.stdout + result.stderr
    assert "rank 0: adapter replicas in sync across 2 processes (backend gloo)" in log
    assert "rank 1: adapter replicas in sync across 2 processes (backend gloo)" in log
    assert krona_core.load(out).training["world_size"] == 2


def test_refusals_are_one_line(tmp_path, images):
    bad = run("-m", "krona_core", "train", "--base", str(tmp_path / "missing"), "--images", str(images),
              "--instance-prompt", "x", "--out", str(tmp_path / "x.krona.safetensors"), cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "no such file or folder" in bad.stderr
    suffix = run("-m", "krona_core", "train", "--base", str(tmp_path), "--images", str(images),
                 "--instance-prompt", "x", "--out", str(tmp_path / "x.safetensors"), cwd=tmp_path)
    assert suffix.returncode != 0 and ".krona.safetensors" in suffix.stderr

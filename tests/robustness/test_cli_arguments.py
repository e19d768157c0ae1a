"""Bad command lines and refused input, as a new user would type them: every bad number is a usage
error (exit 2, one line), every refused input exit 1 with one line `krona: error: …`, nothing is
substituted silently, and `train` checks every argument and path before it loads a model."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from krona_core.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--base", "B", "--images", "I", "--instance-prompt", "p", "--out", "o.krona.safetensors"]
BAD_NUMBERS = [
    ["convert", "a", "b", "--a1", "0"], ["convert", "a", "b", "--a2", "-1"], ["convert", "a", "b", "--a1", "abc"],
    ["convert", "a", "b", "--budget", "0"], ["convert", "a", "b", "--rank", "0"], ["convert", "a", "b", "--rank", "-1"],
    ["convert", "a", "b", "--a1", "1e9"], ["merge", "a", "--out", "o", "--weights", "abc"],
    ["merge", "a", "--out", "o", "--weights", "1,,2"], ["merge", "a", "--out", "o", "--weights", "1,nan"],
    ["merge", "a", "--out", "o", "--strength", "nan"], ["merge", "a", "--out", "o", "--strength", "inf"],
    ["merge", "a", "--out", "o", "--a1", "0"], ["demo", "--steps", "0"], ["demo", "--seed", "-3"],
    *[[*TRAIN, flag, value] for flag, value in [
        ("--lr", "nan"), ("--lr", "0"), ("--lr", "-1"), ("--lr", "inf"), ("--grad-accum", "0"), ("--steps", "0"),
        ("--steps", "-5"), ("--steps", "2.5"), ("--resolution", "0"), ("--resolution", "4"), ("--batch-size", "0"),
        ("--caption-dropout", "2"), ("--num-class-images", "-1"), ("--seed", "-1"), ("--min-snr-gamma", "0"),
        ("--noise-offset", "nan"), ("--keep-tokens", "-1"), ("--warmup-steps", "-1"), ("--checkpoint-every", "-1"),
        ("--a1", "0"), ("--a2", "x"), ("--budget", "-10"), ("--prior-loss-weight", "-1"), ("--weight-decay", "nan"),
        ("--text-encoder-lr", "0")]],
    ["train", "--no-such-flag"], ["convert", "only-one"], ["nonsense"],
]


def usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("krona: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv", BAD_NUMBERS, ids=" ".join)
def test_bad_numbers_are_usage_errors_in_one_line(argv, capsys):
    usage_error(argv, capsys)


def refused(argv: list[str], capsys) -> str:
    """The one error line (after any progress-bar output)."""
    status = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line.strip()]
    assert status == 1, err
    assert lines and lines[-1].startswith("krona: error: ") and "Traceback" not in err, err
    assert all("%|" in line for line in lines[:-1]), err  # nothing but progress bars before it
    return lines[-1]


def test_inconsistent_merge_command_lines_are_usage_errors(capsys, tmp_path):
    assert main(["merge", "a", "b", "--out", "o.krona.safetensors", "--weights", "1"]) == 2
    assert "2 files" in capsys.readouterr().err
    assert main(["merge", "a", "b", "--checkpoint", "c", "--out", "o"]) == 2
    assert "exactly one" in capsys.readouterr().err


def test_every_flag_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in sub.choices.items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not missing, missing


@pytest.fixture()
def dataset(tmp_path) -> Path:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(folder / "a.png")
    return folder


def train_argv(tmp_path: Path, images: Path, *extra: str) -> list[str]:
    base = tmp_path / "empty-base"  # exists, but loading it would fail: refusals must come first
    base.mkdir(exist_ok=True)
    return ["train", "--base", str(base), "--images", str(images), "--instance-prompt", "a photo of sks toy",
            "--out", str(tmp_path / "me.krona.safetensors"), *extra]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA (a gpu): the refusal cannot happen")
def test_cuda_without_cuda_is_a_clear_refusal(tmp_path, dataset, capsys):
    assert "CUDA is not available" in refused(train_argv(tmp_path, dataset, "--device", "cuda"), capsys)


def test_train_checks_paths_and_device_before_loading(tmp_path, dataset, capsys):
    assert "not a device" in refused(train_argv(tmp_path, dataset, "--device", "banana"), capsys)
    out_missing = train_argv(tmp_path, dataset)
    out_missing[out_missing.index("--out") + 1] = str(tmp_path / "missing" / "x.krona.safetensors")
    assert "folder does not exist" in refused(out_missing, capsys)
    assert "no such checkpoint" in refused(train_argv(tmp_path, dataset, "--resume", str(tmp_path / "no.krona.safetensors")), capsys)
    assert "--tokenizer" in refused(train_argv(tmp_path, dataset, "--tokenizer", str(tmp_path / "nope")), capsys)
    assert "no such file or folder" in refused(["train", "--base", str(tmp_path / "nope"), "--images", str(dataset),
                                                "--instance-prompt", "x", "--out", "x.krona.safetensors"], capsys)
    assert not (tmp_path / "me.krona.safetensors").exists()


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00", b"GIF89a junk", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_bad_images_are_refused_by_name(tmp_path, dataset, capsys, content):
    (dataset / "broken.png").write_bytes(content)
    assert "broken.png" in refused(train_argv(tmp_path, dataset), capsys)


def test_a_missing_train_extra_gives_an_install_hint(tmp_path, dataset, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    err = refused(train_argv(tmp_path, dataset), capsys)
    assert "diffusers is not installed" in err and "pip install" in err and "[train]" in err


def test_refused_paths_are_one_line(tmp_path, capsys):
    folder = tmp_path / "dir.krona.safetensors"
    folder.mkdir()
    assert "not a regular file" in refused(["info", str(folder)], capsys)
    good = tmp_path / "good.krona.safetensors"
    from hostile_corpus import good_krona

    good.write_bytes(good_krona())
    err = refused(["convert", str(good), str(good / "out.safetensors"), "--to", "lora"], capsys)  # under a file
    assert "does not exist (or is not a folder)" in err
    assert "does not exist" in refused(["convert", str(good), str(tmp_path / "no" / "o.krona.safetensors")], capsys)
    assert "does not exist" in refused(["merge", str(good), str(good), "--out", str(tmp_path / "no" / "m.krona.safetensors")],
                                       capsys)
    assert "exists" in refused(["convert", str(good), str(good)], capsys)


def test_the_process_never_prints_a_traceback(tmp_path):
    """End to end through the interpreter: a refusal and a usage error."""
    for argv, status in ((["info", str(tmp_path / "x.krona.safetensors")], 1), (["convert", "a", "b", "--rank", "-1"], 2)):
        run = subprocess.run([sys.executable, "-m", "krona_core", *argv], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert run.returncode == status and "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr

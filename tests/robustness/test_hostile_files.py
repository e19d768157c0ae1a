"""Hostile adapter files: `load` and `convert` (one validated reader) refuse each with the pack's
own error naming the file; the CLI turns each into one line and exit status 1, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hostile_corpus import Q, good_krona, hostile_files, hostile_sources, write_corpus

import krona_core
from krona_core.convert.errors import ConvertError
from krona_core.convert.sources import read_source
from krona_core.files.model import KronAFileError
from krona_core.files.reader import read, read_summary

FILES = hostile_files()
SOURCES = hostile_sources()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("hostile"), {**FILES, **SOURCES})


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "krona_core", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=600)


def one_line_refusal(run: subprocess.CompletedProcess, status: int = 1) -> str:
    assert run.returncode == status, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("krona: error: ")
    return run.stderr


@pytest.mark.parametrize("name", sorted(FILES))
def test_load_refuses_each_hostile_file(corpus, name):
    with pytest.raises(KronAFileError) as info:
        read(corpus[name])
    assert name in str(info.value)


@pytest.mark.parametrize("name", sorted(FILES))
def test_convert_reads_with_the_same_rules_as_load(corpus, name):
    """convert once accepted what load refused (scale_baked "false", future versions, integers,
    3-D w2, alpha vectors, duplicate keys) and dropped non-finite modules silently."""
    with pytest.raises(ConvertError) as info:
        read_source(corpus[name], base="sd1")
    assert name in str(info.value)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_convert_refuses_malformed_sources(corpus, name):
    with pytest.raises(ConvertError) as info:
        read_source(corpus[name], base="sd1")
    assert name in str(info.value)


def test_listing_summary_uses_the_same_rules(corpus):
    for name in ("duplicate-key.krona.safetensors", "bad-trigger-json.krona.safetensors",
                 "odd-digit-version.krona.safetensors", "newline-key.krona.safetensors"):
        with pytest.raises(KronAFileError):
            read_summary(corpus[name])


def test_duplicate_key_names_the_key(corpus):
    with pytest.raises(KronAFileError, match="appears twice") as info:
        read(corpus["duplicate-key.krona.safetensors"])
    assert info.value.key == f"{Q}.lokr_w1"


def test_odd_digit_version_is_a_clear_refusal(corpus):
    with pytest.raises(KronAFileError, match="not a number"):
        read(corpus["odd-digit-version.krona.safetensors"])


def test_the_good_file_of_the_corpus_loads(tmp_path):
    path = tmp_path / "good.krona.safetensors"
    path.write_bytes(good_krona())
    file = read(path)
    assert len(file.modules) == 2 and file.trigger_words == ["sks"]
    assert len(read_source(path).modules) == 2


@pytest.mark.parametrize("name", ["kron-bomb.krona.safetensors", "duplicate-key.krona.safetensors",
                                  "scale-not-baked.krona.safetensors", "odd-digit-version.krona.safetensors",
                                  "empty.krona.safetensors", "pickle.krona.safetensors"])
def test_cli_info_and_convert_refuse_in_one_line(corpus, tmp_path, name):
    assert name in one_line_refusal(cli("info", corpus[name]))
    assert name in one_line_refusal(cli("convert", corpus[name], tmp_path / "out.krona.safetensors"))
    assert not (tmp_path / "out.krona.safetensors").exists()


@pytest.mark.parametrize("name", ["lora-bomb.safetensors", "lora-rank-mismatch.safetensors", "lora-nan.safetensors",
                                  "official-3d.safetensors", "lokr-decomposed-bomb.safetensors"])
def test_cli_convert_refuses_malformed_sources_in_one_line(corpus, tmp_path, name):
    out = tmp_path / "out.safetensors"
    assert name in one_line_refusal(cli("convert", corpus[name], out, "--to", "lora", "--base", "sd1"))
    assert not out.exists()


def test_cli_merge_refuses_bombs_and_bad_strengths(corpus, tmp_path):
    bomb = corpus["kron-bomb.krona.safetensors"]
    one_line_refusal(cli("merge", bomb, bomb, "--out", tmp_path / "m.krona.safetensors"))
    for value in ("nan", "inf", "-inf"):
        one_line_refusal(cli("merge", bomb, "--checkpoint", bomb, "--strength", value, "--out", tmp_path / "c.safetensors"), 2)
    assert not list(tmp_path.iterdir())


def test_info_escapes_terminal_control_characters(tmp_path):
    path = tmp_path / "ansi.krona.safetensors"
    path.write_bytes(good_krona(**{"modelspec.title": "\x1b[2J\x1b]0;owned\x07title\r", "x.note": "\u202eevil"}))
    run = cli("info", path)
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stdout and "\x07" not in run.stdout and "\r" not in run.stdout and "\u202e" not in run.stdout
    assert "\\x1b[2J" in run.stdout and "\\u202e" in run.stdout


def test_merge_library_refuses_non_finite_weights(tmp_path):
    path = tmp_path / "good.krona.safetensors"
    path.write_bytes(good_krona())
    file = krona_core.load(path)
    from krona_core.convert.merge import merge_files

    for weight in (float("nan"), float("inf")):
        with pytest.raises(ConvertError, match="finite"):
            merge_files([file, file], [1.0, weight])


def test_writer_never_lets_user_metadata_replace_the_packs_own(tmp_path):
    from krona_core.files.writer import write_file

    path = tmp_path / "good.krona.safetensors"
    path.write_bytes(good_krona())
    file = read(path)
    for key in ("krona.scale_baked", "krona.format_version", "krona.base_model", "ss_network_module",
                "modelspec.title", "sshs_model_hash", "modelspec.architecture", "ss_base_model_version"):
        with pytest.raises(KronAFileError, match="cannot be set in user metadata") as info:
            write_file(tmp_path / f"{key}.krona.safetensors", file, extra={key: "false"})
        assert info.value.key == key and not (tmp_path / f"{key}.krona.safetensors").exists()
    out = write_file(tmp_path / "ok.krona.safetensors", file, extra={"modelspec.author": "me", "my.note": "hi"})
    again = read(out)
    assert again.metadata["modelspec.author"] == "me" and again.metadata["my.note"] == "hi"
    assert torch.equal(again.modules[Q][0], file.modules[Q][0])

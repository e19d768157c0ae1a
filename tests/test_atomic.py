"""Files the pack writes get the permissions a plain open() gives under the umask (not mkstemp's
0600), appear whole or not at all, and never replace an existing file unasked."""

from __future__ import annotations

import os
import stat

import pytest
import torch

import krona_core
from krona_core.convert.merge import merge_into_checkpoint
from krona_core.files import atomic


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def plain_open_mode(directory) -> int:
    probe = os.path.join(directory, "probe")
    with open(probe, "wb"):
        pass
    try:
        return mode(probe)
    finally:
        os.unlink(probe)


def test_current_umask_reads_without_changing_it(umask_022):
    assert atomic.current_umask() == 0o022
    assert atomic.current_umask() == 0o022


def test_adapter_files_get_the_mode_of_a_plain_open(tmp_path, umask_022):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    handle = krona_core.attach(model, a1=2, a2=2, targets="all-linear", network="unet")
    path = handle.save(str(tmp_path / "me.krona.safetensors"))
    assert mode(path) == plain_open_mode(tmp_path) == 0o644
    os.umask(0o077)
    private = handle.save(str(tmp_path / "private.krona.safetensors"))
    assert mode(private) == 0o600  # the user's umask is honoured, not widened


def test_merged_checkpoints_get_the_mode_of_a_plain_open(tmp_path, umask_022):
    from helpers.krona_files import random_krona
    from helpers.tiny_comfy import cached_checkpoint

    checkpoint = cached_checkpoint("sd15")
    file = krona_core.load(random_krona(checkpoint, tmp_path / "a.krona.safetensors", "sd1", seed=1))
    out = tmp_path / "merged.safetensors"
    merge_into_checkpoint(checkpoint, file, 0.5, out)
    assert mode(out) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_no_silent_overwrite_and_no_partial_file(tmp_path):
    target = tmp_path / "x.bin"
    atomic.write_bytes(target, b"first")
    with pytest.raises(FileExistsError):
        atomic.write_bytes(target, b"second")
    assert target.read_bytes() == b"first"

    def failing(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.atomic_write(tmp_path / "y.bin", failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    atomic.write_bytes(target, b"third", overwrite=True)
    assert target.read_bytes() == b"third"

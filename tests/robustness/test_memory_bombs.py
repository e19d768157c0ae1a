"""Memory bombs: small files that describe huge ΔWs or images are refused before anything big is
allocated. The peak resident memory of this process during each refusal is read from /proc
(VmHWM after resetting it through /proc/self/clear_refs) and must stay under BOUND_MB; the
figures are printed (SECURITY.md quotes them)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Callable

import pytest
import torch

from hostile_corpus import kron_bomb, lora_bomb, pack, Q

from krona_core.convert.convert import convert_file
from krona_core.convert.errors import ConvertError
from krona_core.convert.merge import merge_files
from krona_core.convert.sources import read_source
from krona_core.files.model import KronAFile, KronAFileError
from krona_core.files.reader import read
from krona_core.util.images import ImageError, load_image

BOUND_MB = 64  # each bomb, unbounded, would take 1 – 16 GiB
STATUS = Path("/proc/self/status")
pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


def _kib(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_growth_mb(action: Callable[[], object], error: type[Exception]) -> float:
    """MB by which this process's peak RSS rose while `action` raised `error`."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    before = _kib("VmRSS")
    with pytest.raises(error):
        action()
    return (_kib("VmHWM") - before) / 1024


def png_header_only(width: int, height: int) -> bytes:
    """A 60-byte PNG declaring width × height grey pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bombs")
    files = {"kron": ("kron-bomb.krona.safetensors", kron_bomb()), "lora": ("lora-bomb.safetensors", lora_bomb()),
             "lokr": ("lokr-bomb.safetensors", pack({f"{Q}.lokr_w1_a": torch.ones(32768, 1), f"{Q}.lokr_w1_b": torch.ones(1, 32768),
                                                      f"{Q}.lokr_w2": torch.ones(1, 1)})),
             "png": ("bomb.png", png_header_only(40_000, 40_000))}
    out = {}
    for key, (name, blob) in files.items():
        (d / name).write_bytes(blob)
        out[key] = d / name
    return out


def test_small_files_describing_huge_weights_are_refused_in_bounded_memory(bombs, tmp_path):
    merged = KronAFile("<memory>/bomb", {Q: (torch.ones(1, 32768), torch.ones(32768, 1))})  # as a node could hand it over
    cases = {
        "load kron bomb (128 KB, 32768² ΔW)": (lambda: read(bombs["kron"]), KronAFileError),
        "read LoRA bomb (96 KB, rank 1, 12000² ΔW)": (lambda: read_source(bombs["lora"], base="sd1"), ConvertError),
        "convert LoRA bomb to KronA": (lambda: convert_file(bombs["lora"], tmp_path / "o.krona.safetensors", base="sd1"),
                                       ConvertError),
        "convert LoRA bomb to diff": (lambda: convert_file(bombs["lora"], tmp_path / "o.safetensors", "diff", base="sd1"),
                                      ConvertError),
        "read decomposed-LoKr bomb (32768² w1)": (lambda: read_source(bombs["lokr"], base="sd1"), ConvertError),
        "merge two in-memory 32768² files": (lambda: merge_files([merged, merged], [1.0, 0.5]), ConvertError),
        "training image declaring 40000² pixels (60 B)": (lambda: load_image(bombs["png"]), ImageError),
    }
    figures = {name: peak_growth_mb(action, error) for name, (action, error) in cases.items()}
    print("\npeak RSS growth per refused bomb (MB): " + ", ".join(f"{k}: {v:.1f}" for k, v in figures.items()))
    assert all(v < BOUND_MB for v in figures.values()), figures
    assert not list(tmp_path.iterdir())


def test_the_measure_sees_an_allocation():
    """The instrument itself: a 128 MB allocation shows in the peak."""
    def allocate_then_fail() -> None:
        block = torch.ones(32 << 20)  # 128 MB, touched
        raise ValueError(float(block[-1]))

    assert peak_growth_mb(allocate_then_fail, ValueError) > 100


def test_the_image_error_names_the_image(bombs, tmp_path):
    empty, truncated, junk = tmp_path / "empty.png", tmp_path / "truncated.png", tmp_path / "junk.jpg"
    empty.write_bytes(b"")
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:60])
    junk.write_bytes(b"not an image at all")
    for path in (empty, truncated, junk, bombs["png"]):
        with pytest.raises(ImageError) as info:
            load_image(path)
        assert str(path) in str(info.value)

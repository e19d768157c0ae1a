"""The hostile-file corpus of the robustness suite, built by the tests (never committed): every
kind of file the red-team pass of issue 15 found, plus the structural attacks of a safetensors
header. Each entry is (name, bytes); `write_corpus` puts them in a folder."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

from krona_core.files.writer import build_metadata

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
DTYPE_CODES = {torch.float16: "F16", torch.float32: "F32", torch.int32: "I32", torch.int64: "I64"}


def raw(header: dict | str, data: bytes = b"") -> bytes:
    """A safetensors file from a header (a dict, or JSON text for duplicate keys) and its data."""
    blob = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def pack(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    header: dict = {}
    data = b""
    for key, tensor in tensors.items():
        payload = tensor.contiguous().numpy().tobytes()
        header[key] = {"dtype": DTYPE_CODES[tensor.dtype], "shape": list(tensor.shape),
                       "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if metadata is not None:
        header["__metadata__"] = metadata
    return raw(header, data)


def good_modules(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {Q: (torch.randn(4, 2, generator=g), torch.randn(8, 16, generator=g)),
            K: (torch.randn(4, 2, generator=g), torch.randn(8, 16, generator=g))}


def good_krona(seed: int = 0, **metadata: str) -> bytes:
    modules = good_modules(seed)
    meta = {**build_metadata(modules, base_model="sd1", title="good", trigger_words=["sks"]), **metadata}
    tensors = {}
    for name, (w1, w2) in modules.items():
        tensors.update({f"{name}.lokr_w1": w1.half(), f"{name}.lokr_w2": w2.half(), f"{name}.alpha": torch.tensor(1.0).half()})
    return pack(tensors, meta)


def _duplicate_key() -> bytes:
    """Two entries for one tensor name: JSON parsers keep the last, the pack must refuse."""
    w1 = torch.ones(4, 2).half().numpy().tobytes()
    w2 = torch.ones(8, 16).half().numpy().tobytes()
    n1, n2 = len(w1), len(w2)
    text = (f'{{"{Q}.lokr_w1": {{"dtype": "F16", "shape": [4, 2], "data_offsets": [0, {n1}]}}, '
            f'"{Q}.lokr_w2": {{"dtype": "F16", "shape": [8, 16], "data_offsets": [{n1}, {n1 + n2}]}}, '
            f'"{Q}.lokr_w1": {{"dtype": "F16", "shape": [4, 2], "data_offsets": [{n1 + n2}, {2 * n1 + n2}]}}}}')
    return raw(text, w1 + w2 + w1)


def _lora(down: torch.Tensor, up: torch.Tensor, **extra: torch.Tensor) -> bytes:
    name = Q
    return pack({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                 f"{name}.alpha": torch.tensor(float(down.shape[0])), **{f"{name}.{k}": v for k, v in extra.items()}})


def kron_bomb() -> bytes:
    """128 KB of factors describing a 32768 × 32768 ΔW (4 GiB in float32)."""
    return pack({f"{Q}.lokr_w1": torch.ones(1, 32768).half(), f"{Q}.lokr_w2": torch.ones(32768, 1).half()})


def lora_bomb() -> bytes:
    """A 96 KB rank-1 LoRA of a 12000 × 12000 ΔW."""
    return _lora(torch.ones(1, 12000), torch.ones(12000, 1))


def hostile_files() -> dict[str, bytes]:
    """{file name: bytes}: every one must be refused by `load` and by `convert` with the pack's error."""
    good = good_krona()
    n = struct.unpack("<Q", good[:8])[0]
    w1, w2 = torch.ones(4, 2), torch.ones(8, 16)
    nan = w1.clone()
    nan[0, 0] = math.nan
    return {
        "empty.krona.safetensors": b"",
        "short.krona.safetensors": b"\x01\x02\x03",
        "pickle.krona.safetensors": b"\x80\x04\x95" + b"\x00" * 64,
        "zip.krona.safetensors": b"PK\x03\x04" + b"\x00" * 64,
        "header-huge.krona.safetensors": struct.pack("<Q", 1 << 40) + b"{}",
        "header-truncated.krona.safetensors": good[: 8 + n // 2],
        "data-truncated.krona.safetensors": good[:-7],
        "trailing-bytes.krona.safetensors": good + b"\x00" * 16,
        "not-json.krona.safetensors": raw("{not json"),
        "nested-json.krona.safetensors": raw("[" * 100_000 + "]" * 100_000),
        "header-list.krona.safetensors": raw("[]"),
        "duplicate-key.krona.safetensors": _duplicate_key(),
        "newline-key.krona.safetensors": pack({f"{Q}.lokr_w1\n": w1.half(), f"{Q}.lokr_w2": w2.half()}),
        "scale-not-baked.krona.safetensors": good_krona(**{"krona.scale_baked": "false"}),
        "future-version.krona.safetensors": good_krona(**{"krona.format_version": "99"}),
        "odd-digit-version.krona.safetensors": good_krona(**{"krona.format_version": "²"}),
        "bad-trigger-json.krona.safetensors": good_krona(**{"krona.trigger_words": "{oops"}),
        "trigger-not-list.krona.safetensors": good_krona(**{"krona.trigger_words": '{"a": 1}'}),
        "metadata-not-string.krona.safetensors": raw({"__metadata__": {"a": 1}}),
        "integer-factor.krona.safetensors": pack({f"{Q}.lokr_w1": w1.int(), f"{Q}.lokr_w2": w2.int()}),
        "w2-3d.krona.safetensors": pack({f"{Q}.lokr_w1": w1, f"{Q}.lokr_w2": torch.ones(8, 16, 3)}),
        "alpha-vector.krona.safetensors": pack({f"{Q}.lokr_w1": w1, f"{Q}.lokr_w2": w2, f"{Q}.alpha": torch.ones(3)}),
        "nan-factor.krona.safetensors": pack({f"{Q}.lokr_w1": nan, f"{Q}.lokr_w2": w2}),
        "kron-bomb.krona.safetensors": kron_bomb(),
        "unknown-dtype.krona.safetensors": raw({f"{Q}.lokr_w1": {"dtype": "X9", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
        "negative-shape.krona.safetensors": raw({f"{Q}.lokr_w1": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 2]}}, b"\0\0"),
        "overlap.krona.safetensors": raw({f"{Q}.lokr_w1": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]},
                                          f"{Q}.lokr_w2": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}, b"\0\0"),
        "huge-shape.krona.safetensors": raw({f"{Q}.lokr_w1": {"dtype": "F16", "shape": [1 << 20, 1 << 20],
                                                              "data_offsets": [0, 2]}}, b"\0\0"),
        "no-modules.krona.safetensors": raw({}),
    }


def hostile_sources() -> dict[str, bytes]:
    """Other adapter formats `convert` reads, malformed: each must be a ConvertError."""
    nan = torch.ones(4, 320)
    nan[0, 0] = math.nan
    return {
        "lora-bomb.safetensors": lora_bomb(),
        "lora-rank-mismatch.safetensors": _lora(torch.ones(4, 320), torch.ones(320, 3)),
        "lora-nan.safetensors": _lora(nan, torch.ones(320, 4)),
        "lora-alpha-vector.safetensors": pack({f"{Q}.lora_down.weight": torch.ones(4, 320),
                                               f"{Q}.lora_up.weight": torch.ones(320, 4), f"{Q}.alpha": torch.ones(2)}),
        "lora-1d.safetensors": _lora(torch.ones(4), torch.ones(320, 4)),
        "lokr-decomposed-bomb.safetensors": pack({f"{Q}.lokr_w1_a": torch.ones(32768, 1), f"{Q}.lokr_w1_b": torch.ones(1, 32768),
                                                  f"{Q}.lokr_w2": torch.ones(1, 1)}),
        "lokr-mismatch.safetensors": pack({f"{Q}.lokr_w1_a": torch.ones(4, 2), f"{Q}.lokr_w1_b": torch.ones(3, 2),
                                           f"{Q}.lokr_w2": torch.ones(80, 160)}),
        "lokr-tucker-mismatch.safetensors": pack({f"{Q}.lokr_w1": torch.ones(4, 2), f"{Q}.lokr_t2": torch.ones(2, 2, 3, 3),
                                                  f"{Q}.lokr_w2_a": torch.ones(5, 8), f"{Q}.lokr_w2_b": torch.ones(2, 16)}),
        "official-3d.safetensors": pack({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight":
                                         torch.ones(8, 64, 2),
                                         "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight":
                                         torch.ones(5, 40)}),
        "dora-bad-scale.safetensors": pack({f"{Q}.lokr_w1": torch.ones(4, 2), f"{Q}.lokr_w2": torch.ones(80, 160),
                                            f"{Q}.dora_scale": torch.ones(7)}),
        "row-offset-vector.safetensors": pack({f"{Q}.lokr_w1": torch.ones(4, 2), f"{Q}.lokr_w2": torch.ones(80, 160),
                                               f"{Q}.row_offset": torch.tensor([0, 1])}),
    }


def write_corpus(folder: Path, files: dict[str, bytes]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
        out[name] = folder / name
    return out

"""The one safetensors header parser every reader uses (`.krona` loader, convert's sources,
checkpoints, listings): the 8-byte length, the JSON header and its tensor entries, validated
before a byte of tensor data is decoded. Never unpickles.

Refused, each with a `KronAFileError` naming the file and the key: pickles and zips, a header
length out of bounds, truncation, JSON that is not UTF-8 or is nested too deep, duplicate JSON
keys (JSON parsers disagree on which one wins: the pack and the hosts would read different
tensors), metadata values that are not strings, unknown dtypes, shapes that are not lists of
non-negative integers, declared sizes over the limits, offsets outside the data section, data
that overlaps, leaves gaps or trails after the last tensor.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from .model import KronAFileError

MAX_HEADER_BYTES = 64 << 20
MAX_TENSORS = 100_000
MAX_TENSOR_ELEMENTS = 1 << 30
MAX_DIMS = 8

#: every safetensors dtype: (torch dtype, bytes per element)
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2), "F32": (torch.float32, 4), "F64": (torch.float64, 8),
    "BOOL": (torch.bool, 1), "U8": (torch.uint8, 1), "I8": (torch.int8, 1), "I16": (torch.int16, 2),
    "U16": (torch.uint16, 2), "I32": (torch.int32, 4), "U32": (torch.uint32, 4), "I64": (torch.int64, 8),
    "U64": (torch.uint64, 8), "F8_E4M3": (torch.float8_e4m3fn, 1), "F8_E5M2": (torch.float8_e5m2, 1),
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


@dataclass(frozen=True)
class Entry:
    """One tensor of the header; `begin`/`end` are offsets into the data section."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    entries: dict[str, Entry]
    metadata: dict[str, str]
    data_start: int  # file offset of the data section


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


class _Duplicate(Exception):
    def __init__(self, key: str):
        self.key = key


def header_length(head: bytes, path) -> int:
    """The declared header length from the first bytes of a file (refuses pickles and truncation)."""
    if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise KronAFileError(path, "is a pickle/zip checkpoint (.ckpt/.pt); only safetensors files are read, never pickle")
    if len(head) < 8:
        raise KronAFileError(path, f"truncated: {len(head)} bytes, a safetensors file starts with an 8-byte header length")
    n = int.from_bytes(head[:8], "little")
    if n < 2 or n > MAX_HEADER_BYTES:
        raise KronAFileError(path, f"header length {n:,} is not plausible (expected 2 … {MAX_HEADER_BYTES:,} bytes)")
    return n


def parse_header(data: bytes, path, file_size: int | None = None) -> Header:
    """Validate the header at the start of `data` (the whole file, or at least its header when
    `file_size` gives the file's length)."""
    n = header_length(data[:9], path)
    if 8 + n > len(data):
        raise KronAFileError(path, f"truncated: header declares {n:,} bytes but only {len(data) - 8:,} follow")
    try:
        raw = json.loads(data[8: 8 + n].decode("utf-8"), object_pairs_hook=_unique_object)
    except _Duplicate as dup:
        raise KronAFileError(path, "appears twice in the header (a file must name each tensor once)", dup.key) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise KronAFileError(path, f"header is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise KronAFileError(path, "header must be a JSON object")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise KronAFileError(path, "metadata must map strings to strings", "__metadata__")
    if len(raw) > MAX_TENSORS:
        raise KronAFileError(path, f"{len(raw):,} tensors, over the limit of {MAX_TENSORS:,}")
    buffer_len = (len(data) if file_size is None else file_size) - 8 - n
    return Header(_entries(raw, buffer_len, path), metadata, 8 + n)


def _entry(key: str, info: Any, buffer_len: int, path) -> Entry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise KronAFileError(path, "tensor entry must have exactly dtype, shape and data_offsets", key)
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise KronAFileError(path, f"unknown dtype {dtype!r}", key)
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise KronAFileError(path, f"shape must be a list of at most {MAX_DIMS} non-negative integers, got {shape!r}", key)
    numel = math.prod(shape)
    if numel > MAX_TENSOR_ELEMENTS:
        raise KronAFileError(path, f"declared shape {shape} has {numel:,} elements, over the limit of "
                                   f"{MAX_TENSOR_ELEMENTS:,}", key)
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise KronAFileError(path, f"data_offsets must be two integers, got {offsets!r}", key)
    begin, end = offsets
    if not 0 <= begin <= end <= buffer_len:
        raise KronAFileError(path, f"data_offsets {offsets} fall outside the {buffer_len:,}-byte data section "
                                   "(truncated file?)", key)
    if end - begin != numel * DTYPES[dtype][1]:
        raise KronAFileError(path, f"{end - begin} data bytes for shape {shape} of {dtype} "
                                   f"(expected {numel * DTYPES[dtype][1]})", key)
    return Entry(key, dtype, tuple(shape), begin, end)


def _entries(raw: dict, buffer_len: int, path) -> dict[str, Entry]:
    entries = {key: _entry(key, info, buffer_len, path) for key, info in raw.items()}
    position = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            raise KronAFileError(path, "tensor data overlap or leave a gap (corrupt offsets)", entry.key)
        position = entry.end
    if position != buffer_len:
        raise KronAFileError(path, f"{buffer_len - position:,} bytes after the last tensor (corrupt or truncated file)")
    return entries


def file_size(path: str | os.PathLike) -> int:
    """Size of a regular file (KronAFileError when it cannot be opened or is not one)."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise KronAFileError(path, f"cannot open: {exc.strerror or exc}") from None
    if not os.path.isfile(path):
        raise KronAFileError(path, "not a regular file")
    return size


def read_header(path: str | os.PathLike) -> Header:
    """The validated header of a file, reading the header bytes only."""
    path = os.fspath(path)
    size = file_size(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
            n = header_length(head, path)
            head += fh.read(8 + n - len(head))
    except OSError as exc:
        raise KronAFileError(path, f"cannot read: {exc.strerror or exc}") from None
    return parse_header(head, path, size)


def decode(data: bytes, header: Header, entry: Entry) -> torch.Tensor:
    """One tensor's values (a copy, independent of `data`)."""
    raw = data[header.data_start + entry.begin: header.data_start + entry.end]
    return torch.frombuffer(bytearray(raw), dtype=DTYPES[entry.dtype][0]).reshape(entry.shape) if raw else \
        torch.empty(entry.shape, dtype=DTYPES[entry.dtype][0])

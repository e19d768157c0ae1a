"""Reading `.krona.safetensors` files: the safetensors header is parsed and validated here before
any tensor is decoded, so every malformed input — truncated, oversized, wrong dtype, inconsistent
shapes, non-finite values, unknown keys — ends in one `KronAFileError` naming the file and the key,
and no model has been touched yet. Never unpickles.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Mapping

import torch

from .model import FORMAT_VERSION, KronAFile, KronAFileError

MAX_FILE_BYTES = 4 << 30  # an adapter; full SDXL attn+ff at large factors stays far below
MAX_HEADER_BYTES = 64 << 20
MAX_TENSOR_ELEMENTS = 1 << 30
MAX_TENSORS = 100_000

DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
}
_SAFETENSORS_DTYPES = {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F8_E4M3", "F8_E5M2", *DTYPES}
KEY = re.compile(r"^(lora_unet|lora_te1|lora_te2|lora_te)_([A-Za-z0-9_]+)\.(lokr_w1|lokr_w2|alpha)$")
_DECOMPOSED = re.compile(r"\.(lokr_w1_a|lokr_w1_b|lokr_w2_a|lokr_w2_b|lokr_t2)$")
_LORA = re.compile(r"\.(lora_up|lora_down|lora_A|lora_B|lora_mid|hada_w1_a|hada_w2_a|oft_blocks|dora_scale)(\.|$)")


def read(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> KronAFile:
    """Read and fully validate a .krona.safetensors (or full-factor LoKr) file.

    Raises KronAFileError for anything but a well-formed file; nothing is returned half-read.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise KronAFileError(path, f"cannot open: {exc.strerror or exc}") from None
    if not os.path.isfile(path):
        raise KronAFileError(path, "not a regular file")
    if size > max_bytes:
        raise KronAFileError(path, f"file is {size:,} bytes, over the {max_bytes:,}-byte limit for an adapter")
    with open(path, "rb") as fh:
        data = fh.read()
    return parse(data, path)


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Base model, trigger words, title and module count from the header alone (no tensor data
    read): for UIs that list files. Same validation of the header as `read`."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            head += fh.read(min(n, MAX_HEADER_BYTES))
    except OSError as exc:
        raise KronAFileError(path, f"cannot open: {exc.strerror or exc}") from None
    header, metadata, data_start = _parse_header(head, path)
    groups = _group_modules(_check_entries(header, size - data_start, path), path)
    file = KronAFile(path, {}, metadata)
    return {"name": file.name, "base_model": file.base_model, "trigger_words": file.trigger_words,
            "modules": len(groups), "format_version": metadata.get("krona.format_version")}


def parse(data: bytes, path: str | os.PathLike | None = None) -> KronAFile:
    """Validate and decode the bytes of a file (see `read`)."""
    header, metadata, data_start = _parse_header(data, path)
    buffer_len = len(data) - data_start
    entries = _check_entries(header, buffer_len, path)
    groups = _group_modules(entries, path)
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    for module, parts in groups.items():
        tensors = {}
        for part, (key, dtype, shape, begin, end) in parts.items():
            torch_dtype, _ = DTYPES[dtype]
            raw = data[data_start + begin: data_start + end]
            tensor = torch.frombuffer(bytearray(raw), dtype=torch_dtype).reshape(shape)
            if not bool(torch.isfinite(tensor).all()):
                raise KronAFileError(path, "contains NaN or infinite values", key)
            tensors[part] = tensor
        modules[module] = (tensors["lokr_w1"], tensors["lokr_w2"])
        if "alpha" in tensors:
            alphas[module] = float(tensors["alpha"].reshape(-1)[0])
    _check_metadata(metadata, modules, path)
    return KronAFile(os.fspath(path) if path is not None else "<memory>", modules, metadata, alphas)


def _parse_header(data: bytes, path) -> tuple[dict, dict[str, str], int]:
    # a safetensors header is JSON right after the 8-byte length; pickles start with 0x80 (the
    # protocol opcode) and torch.save zips with "PK", but a header length may start with 0x80 too
    if data[8:9] != b"{" and (data[:1] == b"\x80" or data[:2] == b"PK"):
        raise KronAFileError(path, "is a pickle/zip checkpoint (.ckpt/.pt); only safetensors files are read, never pickle")
    if len(data) < 8:
        raise KronAFileError(path, f"truncated: {len(data)} bytes, a safetensors file starts with an 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n < 2 or n > MAX_HEADER_BYTES:
        raise KronAFileError(path, f"header length {n:,} is not plausible (expected 2 … {MAX_HEADER_BYTES:,} bytes)")
    if 8 + n > len(data):
        raise KronAFileError(path, f"truncated: header declares {n:,} bytes but only {len(data) - 8:,} follow")
    try:
        header = json.loads(data[8: 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise KronAFileError(path, f"header is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise KronAFileError(path, "header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise KronAFileError(path, "metadata must map strings to strings", "__metadata__")
    if len(header) > MAX_TENSORS:
        raise KronAFileError(path, f"{len(header):,} tensors, over the limit of {MAX_TENSORS:,}")
    return header, metadata, 8 + n


def _check_entries(header: dict, buffer_len: int, path) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    entries = {}
    spans = []
    for key, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise KronAFileError(path, "tensor entry must have exactly dtype, shape and data_offsets", key)
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _SAFETENSORS_DTYPES:
            raise KronAFileError(path, f"unknown dtype {dtype!r}", key)
        if not isinstance(shape, list) or len(shape) > 8 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise KronAFileError(path, f"shape must be a list of non-negative integers, got {shape!r}", key)
        numel = math.prod(shape)
        if numel > MAX_TENSOR_ELEMENTS:
            raise KronAFileError(path, f"declared shape {shape} has {numel:,} elements, over the limit of {MAX_TENSOR_ELEMENTS:,}", key)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise KronAFileError(path, f"data_offsets must be two integers, got {offsets!r}", key)
        begin, end = offsets
        if not 0 <= begin <= end <= buffer_len:
            raise KronAFileError(path, f"data_offsets {offsets} fall outside the {buffer_len:,}-byte data section (truncated file?)", key)
        if dtype in DTYPES:
            itemsize = DTYPES[dtype][1]
            if end - begin != numel * itemsize:
                raise KronAFileError(path, f"{end - begin} data bytes for shape {shape} of {dtype} (expected {numel * itemsize})", key)
        entries[key] = (dtype, tuple(shape), begin, end)
        spans.append((begin, end, key))
    spans.sort()
    position = 0
    for begin, end, key in spans:
        if begin != position:
            raise KronAFileError(path, "tensor data overlap or leave a gap (corrupt offsets)", key)
        position = end
    if position != buffer_len:
        raise KronAFileError(path, f"{buffer_len - position:,} bytes after the last tensor (corrupt or truncated file)")
    return entries


def _group_modules(entries: Mapping[str, tuple], path) -> dict[str, dict[str, tuple]]:
    groups: dict[str, dict[str, tuple]] = {}
    for key, (dtype, shape, begin, end) in entries.items():
        match = KEY.match(key)
        if not match:
            if _DECOMPOSED.search(key):
                raise KronAFileError(path, "decomposed LoKr factor; convert it first with `python -m krona_core convert`", key)
            if _LORA.search(key):
                raise KronAFileError(path, "LoRA/LyCORIS tensor, not full-factor KronA; convert it first with `python -m krona_core convert`", key)
            raise KronAFileError(path, "unknown key (expected lora_unet_/lora_te_/lora_te1_/lora_te2_<module>.lokr_w1, .lokr_w2 or .alpha)", key)
        if dtype not in DTYPES:
            raise KronAFileError(path, f"dtype {dtype} is not a float type (expected F16, F32, BF16 or F64)", key)
        module = f"{match.group(1)}_{match.group(2)}"
        groups.setdefault(module, {})[match.group(3)] = (key, dtype, shape, begin, end)
    if not groups:
        raise KronAFileError(path, "contains no KronA modules (no *.lokr_w1 / *.lokr_w2 tensors)")
    for module, parts in groups.items():
        for needed in ("lokr_w1", "lokr_w2"):
            if needed not in parts:
                raise KronAFileError(path, f"module has no {needed} tensor", f"{module}.{needed}")
        w1_shape, w2_shape = parts["lokr_w1"][2], parts["lokr_w2"][2]
        if len(w1_shape) != 2:
            raise KronAFileError(path, f"lokr_w1 must be 2-D (a1, a2), got shape {list(w1_shape)}", f"{module}.lokr_w1")
        if len(w2_shape) not in (2, 4):
            raise KronAFileError(path, f"lokr_w2 must be (b1, b2) or (b1, b2, kh, kw), got shape {list(w2_shape)}", f"{module}.lokr_w2")
        for part, shape in (("lokr_w1", w1_shape), ("lokr_w2", w2_shape)):
            if 0 in shape:
                raise KronAFileError(path, f"empty factor (shape {list(shape)})", f"{module}.{part}")
        weight_elements = w1_shape[0] * w2_shape[0] * w1_shape[1] * w2_shape[1] * math.prod(w2_shape[2:])
        if weight_elements > MAX_TENSOR_ELEMENTS:
            raise KronAFileError(path, f"factors describe a {weight_elements:,}-element weight, over the limit", f"{module}.lokr_w1")
        if "alpha" in parts and math.prod(parts["alpha"][2]) != 1:
            raise KronAFileError(path, f"alpha must be a scalar, got shape {list(parts['alpha'][2])}", f"{module}.alpha")
    return groups


def _check_metadata(metadata: Mapping[str, str], modules: Mapping[str, tuple], path) -> None:
    version = metadata.get("krona.format_version")
    if version is not None:
        if not version.isdigit():
            raise KronAFileError(path, f"format version {version!r} is not a number", "krona.format_version")
        if int(version) > int(FORMAT_VERSION):
            raise KronAFileError(path, f"format version {version} is newer than this ComfyUI-KronA reads ({FORMAT_VERSION}); update the pack", "krona.format_version")
    for key in ("krona.factors", "krona.training", "krona.trigger_words", "krona.targets", "krona.provenance"):
        if key in metadata:
            try:
                json.loads(metadata[key])
            except json.JSONDecodeError:
                raise KronAFileError(path, "is not valid JSON", key) from None
    if "krona.trigger_words" in metadata:
        words = json.loads(metadata["krona.trigger_words"])
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise KronAFileError(path, "must be a JSON list of strings", "krona.trigger_words")
    if metadata.get("krona.scale_baked", "true") != "true":
        raise KronAFileError(path, "this reader only applies files with the strength baked into the factors ('true')", "krona.scale_baked")
    if "krona.factors" in metadata:
        factors = json.loads(metadata["krona.factors"])
        layers = factors.get("layers", {}) if isinstance(factors, dict) else None
        if not isinstance(layers, dict):
            raise KronAFileError(path, "must be a JSON object with a 'layers' object", "krona.factors")
        for module, recorded in layers.items():
            if module not in modules:
                raise KronAFileError(path, f"lists module {module!r} which has no tensors", "krona.factors")
            w1, w2 = modules[module]
            actual = [w1.shape[0], w1.shape[1], w2.shape[0], w2.shape[1]]
            if list(recorded) != actual:
                raise KronAFileError(path, f"records factors {recorded} for {module}, tensors are {actual}", "krona.factors")

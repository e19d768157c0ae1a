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

from ..families import delta_limit
from .header import FLOAT_DTYPES, Entry, decode, file_size, parse_header, read_header
from .model import FORMAT_VERSION, KronAFile, KronAFileError

MAX_FILE_BYTES = 4 << 30  # an adapter; full SDXL attn+ff at large factors stays far below
KEY = re.compile(r"(lora_unet|lora_te1|lora_te2|lora_te)_([A-Za-z0-9_]+)\.(lokr_w1|lokr_w2|alpha)")  # fullmatch only
_DECOMPOSED = re.compile(r"\.(lokr_w1_a|lokr_w1_b|lokr_w2_a|lokr_w2_b|lokr_t2)$")
_LORA = re.compile(r"\.(lora_up|lora_down|lora_A|lora_B|lora_mid|hada_w1_a|hada_w2_a|oft_blocks|dora_scale)(\.|$)")


def read(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> KronAFile:
    """Read and fully validate a .krona.safetensors (or full-factor LoKr) file.

    Raises KronAFileError for anything but a well-formed file; nothing is returned half-read.
    """
    path = os.fspath(path)
    size = file_size(path)
    if size > max_bytes:
        raise KronAFileError(path, f"file is {size:,} bytes, over the {max_bytes:,}-byte limit for an adapter")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise KronAFileError(path, f"cannot read: {exc.strerror or exc}") from None
    return parse(data, path)


def factor_shapes(entries: Mapping[str, Entry]) -> dict[str, tuple]:
    """{module: (w1 shape, w2 shape)} of the full-factor KronA tensors among a header's entries."""
    parts: dict[str, dict[str, tuple]] = {}
    for key, entry in entries.items():
        match = KEY.fullmatch(key)
        if match and match.group(3) != "alpha":
            parts.setdefault(f"{match.group(1)}_{match.group(2)}", {})[match.group(3)] = entry.shape
    return {m: (p["lokr_w1"], p["lokr_w2"]) for m, p in parts.items() if len(p) == 2}


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Base model, trigger words, title and module count from the header alone (no tensor data
    read): for UIs that list files. Same validation of the header and metadata as `read`."""
    path = os.fspath(path)
    header = read_header(path)
    groups = _group_modules(header.entries, path, delta_limit(header.metadata.get("krona.base_model")))
    check_metadata(header.metadata, {m: (p["lokr_w1"].shape, p["lokr_w2"].shape) for m, p in groups.items()}, path)
    file = KronAFile(path, {}, header.metadata)
    return {"name": file.name, "base_model": file.base_model, "trigger_words": file.trigger_words,
            "modules": len(groups), "format_version": header.metadata.get("krona.format_version")}


def parse(data: bytes, path: str | os.PathLike | None = None) -> KronAFile:
    """Validate and decode the bytes of a file (see `read`)."""
    header = parse_header(data, path)
    groups = _group_modules(header.entries, path, delta_limit(header.metadata.get("krona.base_model")))
    check_metadata(header.metadata, {m: (p["lokr_w1"].shape, p["lokr_w2"].shape) for m, p in groups.items()}, path)
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    for module, parts in groups.items():
        tensors = {part: _finite(decode(data, header, entry), entry, path) for part, entry in parts.items()}
        modules[module] = (tensors["lokr_w1"], tensors["lokr_w2"])
        if "alpha" in tensors:
            alphas[module] = float(tensors["alpha"].reshape(-1)[0])
    return KronAFile(os.fspath(path) if path is not None else "<memory>", modules, header.metadata, alphas)


def _finite(tensor: torch.Tensor, entry: Entry, path) -> torch.Tensor:
    if not bool(torch.isfinite(tensor).all()):
        raise KronAFileError(path, "contains NaN or infinite values", entry.key)
    return tensor


def _group_modules(entries: Mapping[str, Entry], path, limit: int) -> dict[str, dict[str, Entry]]:
    groups: dict[str, dict[str, Entry]] = {}
    for key, entry in entries.items():
        match = KEY.fullmatch(key)
        if not match:
            if _DECOMPOSED.search(key):
                raise KronAFileError(path, "decomposed LoKr factor; convert it first with `python -m krona_core convert`", key)
            if _LORA.search(key):
                raise KronAFileError(path, "LoRA/LyCORIS tensor, not full-factor KronA; convert it first with `python -m krona_core convert`", key)
            raise KronAFileError(path, "unknown key (expected lora_unet_/lora_te_/lora_te1_/lora_te2_<module>.lokr_w1, .lokr_w2 or .alpha)", key)
        if entry.dtype not in FLOAT_DTYPES:
            raise KronAFileError(path, f"dtype {entry.dtype} is not a float type (expected F16, F32, BF16 or F64)", key)
        module = f"{match.group(1)}_{match.group(2)}"
        groups.setdefault(module, {})[match.group(3)] = entry
    if not groups:
        raise KronAFileError(path, "contains no KronA modules (no *.lokr_w1 / *.lokr_w2 tensors)")
    for module, parts in groups.items():
        for needed in ("lokr_w1", "lokr_w2"):
            if needed not in parts:
                raise KronAFileError(path, f"module has no {needed} tensor", f"{module}.{needed}")
        w1_shape, w2_shape = parts["lokr_w1"].shape, parts["lokr_w2"].shape
        if len(w1_shape) != 2:
            raise KronAFileError(path, f"lokr_w1 must be 2-D (a1, a2), got shape {list(w1_shape)}", f"{module}.lokr_w1")
        if len(w2_shape) not in (2, 4):
            raise KronAFileError(path, f"lokr_w2 must be (b1, b2) or (b1, b2, kh, kw), got shape {list(w2_shape)}", f"{module}.lokr_w2")
        for part, shape in (("lokr_w1", w1_shape), ("lokr_w2", w2_shape)):
            if 0 in shape:
                raise KronAFileError(path, f"empty factor (shape {list(shape)})", f"{module}.{part}")
        weight_elements = w1_shape[0] * w2_shape[0] * w1_shape[1] * w2_shape[1] * math.prod(w2_shape[2:])
        if weight_elements > limit:
            raise KronAFileError(path, f"factors {list(w1_shape)} ⊗ {list(w2_shape)} describe a {weight_elements:,}-element "
                                       f"weight, over the limit of {limit:,} for one layer of its base", f"{module}.lokr_w1")
        if "alpha" in parts and parts["alpha"].numel != 1:
            raise KronAFileError(path, f"alpha must be a scalar, got shape {list(parts['alpha'].shape)}", f"{module}.alpha")
    return groups


def check_krona_metadata(metadata: Mapping[str, str], path) -> None:
    """The rules for the pack's own `krona.*` metadata, for every reader (load, convert, listings)."""
    version = metadata.get("krona.format_version")
    if version is not None:
        if not re.fullmatch(r"[0-9]{1,6}", version):
            raise KronAFileError(path, f"format version {version!r} is not a number", "krona.format_version")
        if int(version) > int(FORMAT_VERSION):
            raise KronAFileError(path, f"format version {version} is newer than this ComfyUI-KronA reads ({FORMAT_VERSION}); "
                                       "update the pack", "krona.format_version")
    parsed = {}
    for key in ("krona.factors", "krona.training", "krona.trigger_words", "krona.targets", "krona.provenance"):
        if key in metadata:
            try:
                parsed[key] = json.loads(metadata[key])
            except (json.JSONDecodeError, RecursionError):
                raise KronAFileError(path, "is not valid JSON", key) from None
    words = parsed.get("krona.trigger_words", [])
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise KronAFileError(path, "must be a JSON list of strings", "krona.trigger_words")
    targets = parsed.get("krona.targets", [])
    if not isinstance(targets, list):
        raise KronAFileError(path, "must be a JSON list", "krona.targets")
    if not isinstance(parsed.get("krona.training", {}) or {}, dict):
        raise KronAFileError(path, "must be a JSON object", "krona.training")
    if metadata.get("krona.scale_baked", "true") != "true":
        raise KronAFileError(path, "this reader only applies files with the strength baked into the factors ('true')",
                             "krona.scale_baked")


def check_metadata(metadata: Mapping[str, str], shapes: Mapping[str, tuple], path) -> None:
    """All metadata rules: `check_krona_metadata` and the per-layer factor record against the
    factors' shapes ({module: (w1 shape, w2 shape)})."""
    check_krona_metadata(metadata, path)
    if "krona.factors" in metadata:
        factors = json.loads(metadata["krona.factors"])
        layers = factors.get("layers", {}) if isinstance(factors, dict) else None
        if not isinstance(layers, dict):
            raise KronAFileError(path, "must be a JSON object with a 'layers' object", "krona.factors")
        for module, recorded in layers.items():
            if module not in shapes:
                raise KronAFileError(path, f"lists module {module!r} which has no tensors", "krona.factors")
            w1, w2 = shapes[module]
            actual = [w1[0], w1[1], w2[0], w2[1]]
            if not isinstance(recorded, list) or recorded != actual:
                raise KronAFileError(path, f"records factors {recorded} for {module}, tensors are {actual}", "krona.factors")

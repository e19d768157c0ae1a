"""The `.krona.safetensors` file: read + validate, build metadata, write atomically.

Layout (DESIGN.md): per adapted module, LyCORIS-LoKr tensors under kohya names —
`lora_unet_<path>.lokr_w1`, `.lokr_w2`, `.alpha` — with any strength baked into the factors,
so ComfyUI's LoraLoader, A1111/Forge and LyCORIS apply them as W + kron(w1, w2). Metadata are
strings: `krona.*` for this project, `ss_*` (kohya) and `modelspec.*` (SAI) for other tools.

Reading parses the safetensors header itself before decoding anything, so every malformed
input — truncated, oversized, wrong dtype, inconsistent shapes, non-finite values, unknown keys —
ends in one `KronAFileError` naming the file and the key, and no model has been touched yet.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch

from .kron import KronShape, materialise

FORMAT_VERSION = "1"
SUFFIX = ".krona.safetensors"

MAX_FILE_BYTES = 4 << 30  # an adapter; full SDXL attn+ff at large factors stays far below
MAX_HEADER_BYTES = 64 << 20
MAX_TENSOR_ELEMENTS = 1 << 30
MAX_TENSORS = 100_000

_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
}
_SAFETENSORS_DTYPES = {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F8_E4M3", "F8_E5M2", *_DTYPES}
_KEY = re.compile(r"^(lora_unet|lora_te1|lora_te2|lora_te)_([A-Za-z0-9_]+)\.(lokr_w1|lokr_w2|alpha)$")
_DECOMPOSED = re.compile(r"\.(lokr_w1_a|lokr_w1_b|lokr_w2_a|lokr_w2_b|lokr_t2)$")
_LORA = re.compile(r"\.(lora_up|lora_down|lora_A|lora_B|lora_mid|hada_w1_a|hada_w2_a|oft_blocks|dora_scale)(\.|$)")

BASE_MODELS = {
    "sd1": dict(ss="sd_v1", arch="stable-diffusion-v1", impl="diffusers", resolution="512x512"),
    "sd2": dict(ss="sd_v2", arch="stable-diffusion-v2-512", impl="diffusers", resolution="512x512"),
    "sd2-v": dict(ss="sd_v2", arch="stable-diffusion-v2-768-v", impl="diffusers", resolution="768x768"),
    "sdxl": dict(ss="sdxl_base_v1-0", arch="stable-diffusion-xl-v1-base", impl="https://github.com/Stability-AI/generative-models", resolution="1024x1024"),
}


class KronAFileError(ValueError):
    """A .krona.safetensors file (or its match against a model) is not what was expected.

    The message always names the file and, where there is one, the offending key.
    """

    def __init__(self, file: str | os.PathLike | None, message: str, key: str | None = None):
        self.file = str(file) if file is not None else "<memory>"
        self.key = key
        where = f"{self.file}: " + (f"key {key!r}: " if key else "")
        super().__init__(where + message)


@dataclass
class KronAFile:
    """A validated adapter file: factors per kohya module name, metadata, where it came from."""

    path: str
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        base = os.path.basename(self.path)
        for suffix in (SUFFIX, ".safetensors"):
            if base.endswith(suffix):
                return base[: -len(suffix)]
        return base

    @property
    def base_model(self) -> str | None:
        return self.metadata.get("krona.base_model") or _base_from_ss(self.metadata.get("ss_base_model_version"))

    @property
    def trigger_words(self) -> list[str]:
        raw = self.metadata.get("krona.trigger_words")
        if raw:
            return list(json.loads(raw))
        phrase = self.metadata.get("modelspec.trigger_phrase", "")
        return [w.strip() for w in phrase.split(",") if w.strip()]

    @property
    def training(self) -> dict[str, Any] | None:
        raw = self.metadata.get("krona.training")
        return json.loads(raw) if raw else None

    def networks(self) -> list[str]:
        from .keymap import split_kohya_key

        return sorted({split_kohya_key(k)[0] for k in self.modules})

    def shapes(self) -> dict[str, KronShape]:
        return {k: KronShape.from_factors(w1.shape, w2.shape) for k, (w1, w2) in self.modules.items()}

    def num_parameters(self) -> int:
        return sum(w1.numel() + w2.numel() for w1, w2 in self.modules.values())

    def delta(self, key: str) -> torch.Tensor:
        """Materialised ΔW of one module (float32)."""
        w1, w2 = self.modules[key]
        return materialise(w1.float(), w2.float())


def _base_from_ss(value: str | None) -> str | None:
    if not value:
        return None
    if value.startswith("sdxl"):
        return "sdxl"
    if value.startswith("sd_v2"):
        return "sd2"
    if value.startswith("sd_v1"):
        return "sd1"
    return None


# --------------------------------------------------------------------------- reading


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
            torch_dtype, _ = _DTYPES[dtype]
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
        if dtype in _DTYPES:
            itemsize = _DTYPES[dtype][1]
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
        match = _KEY.match(key)
        if not match:
            if _DECOMPOSED.search(key):
                raise KronAFileError(path, "decomposed LoKr factor; convert it first with `python -m krona_core convert`", key)
            if _LORA.search(key):
                raise KronAFileError(path, "LoRA/LyCORIS tensor, not full-factor KronA; convert it first with `python -m krona_core convert`", key)
            raise KronAFileError(path, "unknown key (expected lora_unet_/lora_te_/lora_te1_/lora_te2_<module>.lokr_w1, .lokr_w2 or .alpha)", key)
        if dtype not in _DTYPES:
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


# --------------------------------------------------------------------------- writing


def build_metadata(
    modules: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    base_model: str | None,
    title: str,
    trigger_words: Sequence[str] = (),
    targets: str | Sequence[str] | None = None,
    factor_rule: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    author: str | None = None,
    description: str | None = None,
    extra: Mapping[str, str] | None = None,
    date: str | None = None,
) -> dict[str, str]:
    """All metadata strings of a file: krona.*, kohya ss_* and SAI modelspec.*."""
    words = [w.strip() for w in trigger_words if w and w.strip()]
    layers = {name: [w1.shape[0], w1.shape[1], w2.shape[0], w2.shape[1]] for name, (w1, w2) in sorted(modules.items())}
    date = date or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    meta: dict[str, str] = {
        "krona.format_version": FORMAT_VERSION,
        "krona.base_model": base_model or "unknown",
        "krona.factors": json.dumps({"rule": dict(factor_rule or {}), "layers": layers}, separators=(",", ":")),
        "krona.targets": json.dumps([targets] if isinstance(targets, str) else list(targets or [])),
        "krona.trigger_words": json.dumps(words, ensure_ascii=False),
        "krona.scale_baked": "true",
        "ss_network_module": "lycoris.kohya",
        "ss_network_args": json.dumps({"algo": "lokr", "full_matrix": "true"}),
        "ss_output_name": title,
        "ss_tag_frequency": json.dumps({title: {w: 1 for w in words}}, ensure_ascii=False),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.title": title,
        "modelspec.date": date,
        "modelspec.tags": "krona,lokr",
    }
    info = BASE_MODELS.get(base_model or "")
    if info:
        meta["ss_base_model_version"] = info["ss"]
        meta["modelspec.architecture"] = f"{info['arch']}/lora"
        meta["modelspec.implementation"] = info["impl"]
        meta["modelspec.resolution"] = info["resolution"]
    if words:
        meta["modelspec.trigger_phrase"] = ", ".join(words)
    if training is not None:
        meta["krona.training"] = json.dumps(training, sort_keys=True, default=str)
    if provenance is not None:
        meta["krona.provenance"] = json.dumps(provenance, sort_keys=True, default=str)
    if author:
        meta["modelspec.author"] = author
    if description:
        meta["modelspec.description"] = description
    for key, value in (extra or {}).items():
        if not isinstance(value, str):
            raise TypeError(f"metadata value for {key!r} must be a string")
        meta[key] = value
    return meta


def _tensor_dict(modules: Mapping[str, tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype, path) -> dict[str, torch.Tensor]:
    if dtype not in (torch.float16, torch.float32):
        raise KronAFileError(path, f"files are written as float16 or float32, not {dtype} (older hosts fail on bfloat16)")
    limit = torch.finfo(dtype).max
    tensors: dict[str, torch.Tensor] = {}
    for name, (w1, w2) in sorted(modules.items()):
        if not _KEY.match(f"{name}.lokr_w1"):
            raise KronAFileError(path, "is not a kohya module name (lora_unet_…/lora_te_…)", name)
        for part, tensor in (("lokr_w1", w1), ("lokr_w2", w2)):
            t = tensor.detach().to("cpu", torch.float32)
            if not bool(torch.isfinite(t).all()):
                raise KronAFileError(path, "refusing to write NaN/inf values", f"{name}.{part}")
            if float(t.abs().max()) > limit:
                raise KronAFileError(path, f"values exceed the {dtype} range; save as float32", f"{name}.{part}")
            tensors[f"{name}.{part}"] = t.to(dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(1.0, dtype=dtype)  # ignored by every loader for full factors
    return tensors


def _kohya_hashes(blob: bytes) -> dict[str, str]:
    """kohya's sshs_model_hash (sha256 of the data section) and sshs_legacy_hash."""
    n = int.from_bytes(blob[:8], "little")
    legacy = hashlib.sha256(blob[0x100000: 0x110000]).hexdigest()[:8]
    return {"sshs_model_hash": hashlib.sha256(blob[8 + n:]).hexdigest(), "sshs_legacy_hash": legacy}


def write(
    path: str | os.PathLike,
    modules: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    metadata: Mapping[str, str],
    dtype: torch.dtype = torch.float16,
    overwrite: bool = False,
) -> str:
    """Write factors + metadata atomically (temp file, fsync, rename); never overwrites silently."""
    from safetensors.torch import save as st_save

    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise KronAFileError(path, f"file name must end with {SUFFIX}")
    if os.path.exists(path) and not overwrite:
        raise KronAFileError(path, "already exists; choose another name or pass overwrite=True")
    tensors = _tensor_dict(modules, dtype, path)
    meta = dict(metadata)
    meta.update(_kohya_hashes(st_save(tensors, meta)))
    blob = st_save(tensors, meta)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                raise KronAFileError(path, "already exists (created while writing); nothing was overwritten") from None
            except OSError:
                if os.path.exists(path):
                    raise KronAFileError(path, "already exists; nothing was overwritten") from None
                os.replace(tmp, path)  # file systems without hard links
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def from_handles(
    handles: Iterable[Any],
    *,
    title: str,
    trigger_words: Sequence[str] = (),
    training: Mapping[str, Any] | None = None,
    targets: str | Sequence[str] | None = None,
    factor_rule: Mapping[str, Any] | None = None,
    **extra: Any,
) -> KronAFile:
    """An in-memory KronAFile of one or more attach() handles (UNet and text encoders), with the
    metadata a saved file gets; strength is baked into the factors."""
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    bases = set()
    handles = list(handles)
    if targets is None:
        targets = sorted({t for h in handles for t in getattr(h, "targets", [])})
    if factor_rule is None and handles:
        factor_rule = getattr(handles[0], "rule", None)
    for handle in handles:
        for name, (w1, w2) in handle.factors().items():
            if name in modules:
                raise KronAFileError(title, "two handles adapt the same module", name)
            modules[name] = (w1.float().cpu(), w2.float().cpu())
        if handle.base:
            bases.add(handle.base)
    if len(bases) > 1:
        raise KronAFileError(title, f"handles disagree on the base model: {sorted(bases)}")
    metadata = build_metadata(modules, base_model=bases.pop() if bases else None, title=title,
                              trigger_words=trigger_words, targets=targets, factor_rule=factor_rule,
                              training=training, **extra)
    return KronAFile(f"<memory>/{title}", modules, metadata)


def save(
    path: str | os.PathLike,
    handles: Iterable[Any],
    *,
    title: str | None = None,
    dtype: torch.dtype = torch.float16,
    overwrite: bool = False,
    **metadata: Any,
) -> str:
    """Write the adapters of one or more attach() handles to one file (see `from_handles`)."""
    path = os.fspath(path)
    title = title or os.path.basename(path).removesuffix(SUFFIX).removesuffix(".safetensors")
    file = from_handles(handles, title=title, **metadata)
    return write(path, file.modules, file.metadata, dtype=dtype, overwrite=overwrite)


def write_file(
    path: str | os.PathLike,
    file: KronAFile,
    *,
    trigger_words: Sequence[str] | None = None,
    title: str | None = None,
    extra: Mapping[str, str] | None = None,
    dtype: torch.dtype = torch.float16,
    overwrite: bool = False,
) -> str:
    """Write an in-memory KronAFile (loaded, trained or converted), refreshing its metadata.

    Keeps what the file already records (base model, factor rule, targets, training record,
    provenance, foreign keys such as user notes) and replaces title, trigger words and hashes.
    """
    path = os.fspath(path)
    old = dict(file.metadata)
    factors = json.loads(old.get("krona.factors", "{}") or "{}")
    targets = json.loads(old["krona.targets"]) if "krona.targets" in old else None
    title = title or os.path.basename(path).removesuffix(SUFFIX).removesuffix(".safetensors")
    words = list(trigger_words) if trigger_words is not None else file.trigger_words
    rebuilt = build_metadata(
        file.modules,
        base_model=file.base_model,
        title=title,
        trigger_words=words,
        targets=targets,
        factor_rule=factors.get("rule") if isinstance(factors, dict) else None,
        training=file.training,
        provenance=json.loads(old["krona.provenance"]) if "krona.provenance" in old else None,
        author=old.get("modelspec.author"),
        description=old.get("modelspec.description"),
    )
    regenerated = {"sshs_model_hash", "sshs_legacy_hash", "ss_tag_frequency", "modelspec.trigger_phrase"}
    kept = {k: v for k, v in old.items() if k not in rebuilt and k not in regenerated}
    metadata = {**kept, **rebuilt, **dict(extra or {})}
    return write(path, file.modules, metadata, dtype=dtype, overwrite=overwrite)

"""A source adapter file read into kohya-named modules of one kind each (`kinds.py`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from .. import families
from ..families import FamilyError
from ..files.header import FLOAT_DTYPES, Header, decode, file_size, parse_header, read_header
from ..files.model import KronAFileError, split_trigger_words
from ..files.reader import MAX_FILE_BYTES, check_metadata, factor_shapes
from ..naming.kohya import KeyMapError
from ..naming.unet import UNetKeyMap
from ..ops.limits import MAX_DELTA_ELEMENTS, DeltaTooLarge, check_delta_shape
from .errors import ConvertError
from .kinds import Dense, SourceModule
from .readers import LoKrReader, lokr_format, reader_for


def _validated_header(path: str) -> Header:
    if not path.endswith(".safetensors"):
        raise ConvertError(f"{path}: only .safetensors files are read (never pickle)")
    try:
        return read_header(path)
    except KronAFileError as exc:
        raise ConvertError(str(exc)) from None


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and metadata of a .safetensors file such as a checkpoint (never pickle), its
    header validated first by the one header parser (`files/header.py`)."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    header = _validated_header(path)
    try:
        with safe_open(path, "pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(header.metadata)
    except (SafetensorError, OSError) as exc:
        raise ConvertError(f"{path}: cannot read as safetensors ({exc})") from None


def load_adapter_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of an adapter file, validated as `load` validates a .krona file:
    the header (`files/header.py`), the pack's `krona.*` metadata, float factors (integers only for
    `row_offset`), every value finite, at most MAX_FILE_BYTES."""
    path = os.fspath(path)
    header = _validated_header(path)
    try:
        check_metadata(header.metadata, factor_shapes(header.entries), path)
        if file_size(path) > MAX_FILE_BYTES:
            raise KronAFileError(path, f"file is over the {MAX_FILE_BYTES:,}-byte limit for an adapter")
        with open(path, "rb") as fh:
            data = fh.read()
        parsed = parse_header(data, path)
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except KronAFileError as exc:
        raise ConvertError(str(exc)) from None
    tensors = {}
    for key, entry in parsed.entries.items():
        integer = key.endswith(".row_offset")
        if (entry.dtype not in FLOAT_DTYPES) != integer or (integer and entry.dtype in ("BOOL", "F8_E4M3", "F8_E5M2")):
            expected = "an integer" if integer else "a float (F16, BF16, F32, F64)"
            raise ConvertError(f"{path}: key {key!r}: dtype {entry.dtype} where {expected} tensor is expected")
        tensor = decode(data, parsed, entry)
        if not integer and not bool(torch.isfinite(tensor).all()):
            raise ConvertError(f"{path}: key {key!r}: contains NaN or infinite values")
        tensors[key] = tensor
    return tensors, dict(parsed.metadata)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Source:
    path: str
    format: str
    base: str | None
    modules: dict[str, SourceModule]
    metadata: dict[str, str] = field(default_factory=dict)
    sha256: str = ""

    @property
    def trigger_words(self) -> list[str]:
        if "krona.trigger_words" in self.metadata:
            return list(json.loads(self.metadata["krona.trigger_words"]))
        return split_trigger_words(self.metadata.get("modelspec.trigger_phrase", ""))


def read_source(path: str | os.PathLike, base: str | None = None, unet_map: UNetKeyMap | None = None) -> Source:
    """Read any supported adapter file into kohya-named modules.

    The base model is `base`, else the file's own record, else detected from the modules' shapes
    (cross-attention widths); readers of diffusers-named files need it to name modules, with the
    UNet layout of the model the file is for (`unet_map`, default the family's real one).
    """
    path = os.fspath(path)
    tensors, metadata = load_adapter_tensors(path)
    reader = reader_for(tensors, path)
    family = _family(base, path) if base else families.find(metadata.get("krona.base_model"))
    raw = reader.read(tensors, path, metadata)
    shapes = {name: module.weight_shape for (_, name), module in raw.items()}
    if family is None:
        family = families.detect(shapes)  # from the shapes alone: nothing is materialised yet
    limit = families.delta_limit(family)
    for (_, name), module in raw.items():
        try:
            check_delta_shape(module.weight_shape, f"{path}: module {name}", limit=limit)
        except DeltaTooLarge as exc:
            raise ConvertError(str(exc)) from None
    if reader.needs_family:
        if family is None:
            raise ConvertError(f"{path}: cannot tell the base model from the cross-attention widths; pass --base "
                               f"{', '.join(families.names())}")
        modules = _named(raw, reader, family, unet_map, path, limit)
    else:
        modules = {name: module for (_, name), module in raw.items()}
    fmt = lokr_format(tensors) if type(reader) is LoKrReader else reader.format
    return Source(path, fmt, family.name if family else None, modules, metadata, sha256_file(path))


def _named(raw: dict, reader, family: families.Family, unet_map: UNetKeyMap | None, path: str,
           limit: int) -> dict[str, SourceModule]:
    """The modules of a diffusers / ldm-named file under their kohya names; row parts of a fused
    weight assembled into it (`fused_module`)."""
    modules, parts = {}, {}
    for (network, name), module in raw.items():
        try:
            module_path = reader.module_path(name, family)
            fused = family.fused_part(family.network_of_diffusers(network) if reader.diffusers_components else network,
                                      module_path)
            if fused is not None:
                parts.setdefault(fused[0], []).append((fused[1], module))
                continue
            kohya = reader.kohya_name(network, module_path, family, unet_map)
        except KeyMapError as exc:
            raise ConvertError(f"{path}: module {name!r}: {exc}") from None
        modules[kohya] = dataclasses.replace(module, name=kohya)
    modules.update({name: fused_module(name, found, path, limit) for name, found in parts.items()})
    return modules


def fused_module(name: str, parts: list, path: str, limit: int = MAX_DELTA_ELEMENTS) -> Dense:
    """The ΔW of a fused weight (Flux's qkv, linear1) from the modules of its row parts — diffusers
    to_q / to_k / to_v / proj_mlp in another trainer's file — stacked in the fused order, the parts
    the file does not adapt left zero: the one weight a KronA module adapts (`families.dit`)."""
    sizes = parts[0][0].sizes
    units = {module.weight_shape[0] // part.sizes[part.index] for part, module in parts}
    columns = {tuple(module.weight_shape[1:]) for _, module in parts}
    if len(units) != 1 or len(columns) != 1:
        raise ConvertError(f"{path}: the parts of {name} have inconsistent shapes "
                           f"{sorted(tuple(m.weight_shape) for _, m in parts)}")
    unit = units.pop()
    shape = (unit * sum(sizes), *columns.pop())
    try:
        check_delta_shape(shape, f"{path}: fused module {name}", limit=limit)
    except DeltaTooLarge as exc:
        raise ConvertError(str(exc)) from None
    dense = torch.zeros(*shape, dtype=torch.float64)
    for part, module in parts:
        start, size = part.rows(unit * sum(sizes))
        dense[start:start + size] = module.dense().reshape(size, *dense.shape[1:])
    return Dense(name, dense)


def _family(name: str, path: str) -> families.Family:
    try:
        return families.get(name)
    except FamilyError as exc:
        raise ConvertError(f"{path}: {exc}") from None

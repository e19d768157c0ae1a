"""Writing `.krona.safetensors` files: metadata (krona.*, kohya ss_*, SAI modelspec.*) and the
tensors, atomically (`atomic.py`), never silently overwriting.

Layout (DESIGN.md): per adapted module, LyCORIS-LoKr tensors under kohya names —
`lora_unet_<path>.lokr_w1`, `.lokr_w2`, `.alpha` — with any strength baked into the factors,
so ComfyUI's LoraLoader, A1111/Forge and LyCORIS apply them as W + kron(w1, w2).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import torch

from .. import families
from . import atomic
from .model import FORMAT_VERSION, SUFFIX, KronAFile, KronAFileError, split_trigger_words
from .reader import KEY


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
    words = split_trigger_words(trigger_words)
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
    family = families.find(base_model)
    if family is not None:
        meta.update(family.metadata())
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
        if not KEY.match(f"{name}.lokr_w1"):
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
    try:
        return atomic.write_bytes(path, st_save(tensors, meta), overwrite)
    except FileExistsError:
        raise KronAFileError(path, "already exists (created while writing); nothing was overwritten") from None


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


#: keys any family's metadata() may set, reserved to the pack even on files of no known base
_FAMILY_KEYS = {key for family in families.FAMILIES for key in family.metadata()}
#: what a user's own metadata may set among the keys the pack writes
USER_KEYS = ("modelspec.author", "modelspec.description")


def _check_user_keys(extra: Mapping[str, str], owned: set[str], path) -> None:
    """A user's metadata may add keys, never replace the pack's own (`krona.*`, the kohya and
    modelspec keys it writes, hashes): such a file would be refused or misdescribe itself."""
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise KronAFileError(path, "user metadata must map strings to strings", str(key))
        if key not in USER_KEYS and (key.startswith("krona.") or key.startswith("sshs_") or key in owned):
            raise KronAFileError(path, "is written by ComfyUI-KronA itself and cannot be set in user metadata "
                                       f"(allowed: new keys, {', '.join(USER_KEYS)})", key)


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
    _check_user_keys(extra or {}, set(rebuilt) | regenerated | _FAMILY_KEYS, path)
    kept = {k: v for k, v in old.items() if k not in rebuilt and k not in regenerated}
    metadata = {**kept, **rebuilt, **dict(extra or {})}
    return write(path, file.modules, metadata, dtype=dtype, overwrite=overwrite)

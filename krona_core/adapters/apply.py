"""Bind a validated file to a model: resolve names, check every shape, then attach.

All checks run before the first adapter is attached, so a file that does not fit the model
raises `KronAFileError` and leaves the model exactly as it was.
"""

from __future__ import annotations

import math
import os
import warnings

import torch.nn as nn

from ..files.model import KronAFile, KronAFileError
from ..files.reader import read
from ..naming.kohya import KeyMapError, kohya_key, normalize_path, split_kohya_key
from ..naming.unet import UNetKeyMap
from ..ops.shapes import KronShape
from .attach import attach, detect_network
from .layers import KronANetwork
from .targets import is_adaptable


def load(path: str | os.PathLike) -> KronAFile:
    """Read and validate a .krona.safetensors file (raises KronAFileError)."""
    return read(path)


def kohya_names(model: nn.Module, network: str) -> dict[str, str]:
    """{kohya module name: module path} for every adaptable module, both UNet path styles."""
    paths = [name for name, _ in model.named_modules() if name]
    unet_map = None
    if network == "unet":
        try:
            unet_map = UNetKeyMap.from_names(normalize_path("unet", p) for p in paths)
        except KeyMapError:
            unet_map = None  # not an SD-family UNet: its own names only
    table: dict[str, str] = {}
    for path, module in model.named_modules():
        if not path or not is_adaptable(module):
            continue
        norm = normalize_path(network, path)
        aliases = {kohya_key(network, norm)}
        if unet_map is not None:
            try:
                aliases = unet_map.kohya_aliases(norm)
            except KeyMapError:
                pass
        for alias in aliases:
            table[alias] = path
    return table


def apply(
    model: nn.Module,
    file: KronAFile | str | os.PathLike,
    strength: float = 1.0,
    *,
    network: str | None = None,
    base: str | None = None,
    merge: bool = False,
    strict: bool = False,
) -> KronANetwork:
    """Attach the adapters of `file` that belong to `model` (its `network`) at `strength`.

    Unmatched modules of that network warn (or raise with strict=True); no match at all, or a
    factor shape that does not fit its layer, raises KronAFileError before anything is attached.
    """
    if not math.isfinite(float(strength)):
        raise ValueError(f"strength must be a finite number, got {strength}")
    if not isinstance(file, KronAFile):
        file = read(file)
    detected_network, detected_base = detect_network(model)
    network = network or detected_network
    if network is None:
        raise KronAFileError(file.path, f"cannot tell which network (unet/te/te1/te2) {type(model).__name__} is; pass network=")
    wanted = {k: v for k, v in file.modules.items() if split_kohya_key(k)[0] == network}
    if not wanted:
        raise KronAFileError(file.path, f"has no {network} modules (it has: {', '.join(file.networks())})")
    table = kohya_names(model, network)
    matched = {key: table[key] for key in wanted if key in table}
    unmatched = sorted(set(wanted) - set(matched))
    if not matched:
        raise KronAFileError(
            file.path,
            f"none of its {len(wanted)} {network} modules exist in {type(model).__name__} "
            f"(file base model: {file.base_model or 'unknown'}, model: {detected_base or 'unknown'}); e.g. {unmatched[0]!r}",
        )
    modules = dict(model.named_modules())
    shapes: dict[str, KronShape] = {}
    for key, path in matched.items():
        w1, w2 = wanted[key]
        shape = KronShape.from_factors(w1.shape, w2.shape)
        weight_shape = tuple(modules[path].weight.shape)
        if shape.weight_shape != weight_shape:
            raise KronAFileError(
                file.path,
                f"factors {list(w1.shape)} ⊗ {list(w2.shape)} give a {list(shape.weight_shape)} weight but "
                f"{path} is {list(weight_shape)} (a file for another base model?)",
                key + ".lokr_w1",
            )
        shapes[path] = shape
    if unmatched:
        message = f"{len(unmatched)} of {len(wanted)} {network} modules have no match in the model, e.g. {unmatched[:3]}"
        if strict:
            raise KronAFileError(file.path, message)
        warnings.warn(f"{file.path}: {message}", stacklevel=2)
    handle = attach(model, shapes=shapes, network=network, base=base or file.base_model or detected_base)
    for key, path in matched.items():
        handle.adapter(path).load_factors(*wanted[key])
    handle.set_strength(strength)
    handle.unmatched = unmatched
    if merge:
        handle.merge()
    return handle


def apply_all(models: dict[str, nn.Module], file: KronAFile | str | os.PathLike, strength: float = 1.0, **kwargs) -> list[KronANetwork]:
    """apply() to several networks of one pipeline, e.g. {"unet": unet, "te": text_encoder}.

    If any network fails, the ones already attached are removed again: all models or none.
    """
    if not isinstance(file, KronAFile):
        file = read(file)
    present = set(file.networks())
    handles: list[KronANetwork] = []
    try:
        for network, model in models.items():
            if network in present:
                handles.append(apply(model, file, strength, network=network, **kwargs))
    except Exception:
        for handle in handles:
            handle.remove()
        raise
    return handles

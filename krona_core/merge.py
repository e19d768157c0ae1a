"""Merging: several KronA files into one, and a KronA file into a full checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import keymap
from .convert import Conversion, ConvertError, ErrorTally, fit_kronecker, load_tensors
from .format import KronAFile, build_metadata
from .kron import KronShape, choose_shape, materialise


def merge_files(files: Sequence[KronAFile], weights: Sequence[float], a1: int | None = None, a2: int | None = None) -> Conversion:
    """One file from Σ weightᵢ·ΔWᵢ per module: exact where one file holds a module alone, else
    the nearest Kronecker product (at (a1, a2), or the first file's shapes) with its error."""
    if not files or len(files) != len(weights):
        raise ConvertError("merge needs files and as many weights")
    bases = {f.base_model for f in files if f.base_model}
    if len(bases) > 1:
        raise ConvertError(f"the files are for different base models: {sorted(bases)}")
    names = sorted({n for f in files for n in f.modules})
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    tally = ErrorTally()
    for name in names:
        parts = [(w, f.modules[name]) for f, w in zip(files, weights) if name in f.modules and w != 0]
        if not parts:
            continue
        shapes = {KronShape.from_factors(w1.shape, w2.shape).weight_shape for _, (w1, w2) in parts}
        if len(shapes) > 1:
            raise ConvertError(f"{name}: the files adapt it with different weight shapes {sorted(shapes)}")
        if len(parts) == 1:
            w, (w1, w2) = parts[0]
            modules[name] = (w1.float() * w, w2.float())
            tally.add(name, 0.0, float((w1.double() * w).norm() ** 2 * w2.double().norm() ** 2))
            continue
        dense = sum(w * materialise(w1.double(), w2.double()) for w, (w1, w2) in parts)
        first = parts[0][1]
        t1 = a1 if a1 is not None else first[0].shape[0]
        t2 = a2 if a2 is not None else first[0].shape[1]
        modules[name], rel_error, norm2 = fit_kronecker(dense, choose_shape(dense.shape, t1, t2))
        tally.add(name, rel_error, norm2)
    errors, total = tally.errors, tally.total
    words = list(dict.fromkeys(w for f in files for w in f.trigger_words))
    provenance = {"merged_from": [{"name": f.name, "weight": w} for f, w in zip(files, weights)],
                  "total_rel_error": total, "max_layer_rel_error": max(errors.values(), default=0.0)}
    title = "+".join(f.name for f in files)[:120]
    metadata = build_metadata(modules, base_model=bases.pop() if bases else None, title=title, trigger_words=words,
                              factor_rule={"mode": "merge"}, provenance=provenance)
    return Conversion(KronAFile(f"<memory>/{title}", modules, metadata), errors, total)


def _atomic_write_safetensors(tensors: dict, metadata: dict, path: str) -> None:
    from safetensors.torch import save_file

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata)
        os.link(tmp, path)  # fails if the target appeared: never overwrite
    except FileExistsError:
        raise ConvertError(f"{path}: already exists; nothing was overwritten") from None
    finally:
        os.unlink(tmp)


def _add(target: torch.Tensor, delta: torch.Tensor, rows: tuple[int, int] | None, transposed: bool) -> torch.Tensor:
    out = target.float().clone()
    delta = delta.reshape(-1, *out.shape[1:]) if rows else delta.reshape(out.shape if not transposed else out.T.shape)
    if transposed:
        delta = delta.T
    if rows:
        index, count = rows
        size = out.shape[0] // count
        out[index * size:(index + 1) * size] += delta
    else:
        out += delta
    return out.to(target.dtype)


def merge_into_checkpoint(checkpoint: str | os.PathLike, file: KronAFile, strength: float, out: str | os.PathLike,
                          progress: Callable[[str], None] | None = None) -> dict[str, str]:
    """Bake strength·ΔW into a single-file (ldm/SGM) checkpoint, written to a new file."""
    checkpoint, out = os.fspath(checkpoint), os.fspath(out)
    if os.path.exists(out):
        raise ConvertError(f"{out}: already exists; nothing was overwritten")
    tensors, metadata = load_tensors(checkpoint)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    from .train_diffusers import detect_checkpoint_base

    base = detect_checkpoint_base(shapes)
    if file.base_model and file.base_model != base:
        raise ConvertError(f"{file.path}: the file is for {file.base_model}, {checkpoint} is {base}")
    slots = keymap.checkpoint_modules(shapes, base)
    missing = [n for n in file.modules if n not in slots]
    if missing:
        raise ConvertError(f"{file.path}: {len(missing)} module(s) have no weight in {checkpoint}, e.g. {missing[:3]}")
    for index, (name, (w1, w2)) in enumerate(sorted(file.modules.items())):
        slot, weight_shape = slots[name]
        delta = materialise(w1.float(), w2.float()) * strength
        if tuple(delta.shape[:2]) != tuple(weight_shape[:2]):
            raise ConvertError(f"{file.path}: {name} gives {list(delta.shape)}, the checkpoint weight is {list(weight_shape)}")
        tensors[slot.key] = _add(tensors[slot.key], delta, slot.rows, slot.transposed)
        if progress:
            progress(f"{index + 1}/{len(file.modules)} {name}")
    metadata = {**metadata, "krona.merged": json.dumps({"file": file.name, "strength": strength,
                                                         "modules": len(file.modules)})}
    _atomic_write_safetensors(tensors, metadata, out)
    return {"base": base, "modules": str(len(file.modules))}


def merge_into_diffusers(folder: str | os.PathLike, file: KronAFile, strength: float, out: str | os.PathLike) -> dict[str, str]:
    """Bake strength·ΔW into a diffusers model folder, written as a new folder."""
    from safetensors.torch import save_file

    folder, out = Path(folder), Path(out)
    if out.exists():
        raise ConvertError(f"{out}: already exists; nothing was overwritten")
    parts = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}
    by_network: dict[str, dict[str, tuple]] = {}
    for name, factors in file.modules.items():
        by_network.setdefault(keymap.split_kohya_key(name)[0], {})[name] = factors
    staging = Path(tempfile.mkdtemp(prefix=".krona-merge-", dir=out.parent))
    try:
        shutil.copytree(folder, staging, dirs_exist_ok=True)
        for network, modules in by_network.items():
            sub = staging / parts[network]
            weights = [p for p in sub.glob("*.safetensors")]
            if len(weights) != 1:
                raise ConvertError(f"{folder / parts[network]}: expected one .safetensors weight file, found {len(weights)}")
            tensors, metadata = load_tensors(weights[0])
            module_paths = [k[: -len(".weight")] for k in tensors if k.endswith(".weight")]
            if network == "unet":
                table = {}
                unet_map = keymap.UNetKeyMap.from_names(module_paths)
                for path in module_paths:
                    for alias in keymap.kohya_unet_aliases(path, unet_map):
                        table[alias] = path
            else:
                table = {keymap.kohya_key(network, p if p.startswith("text_model.") else "text_model." + p): p for p in module_paths}
            for name, (w1, w2) in modules.items():
                if name not in table:
                    raise ConvertError(f"{file.path}: {name} has no weight in {weights[0]}")
                key = table[name] + ".weight"
                delta = materialise(w1.float(), w2.float()) * strength
                tensors[key] = _add(tensors[key], delta, None, False)
            save_file(tensors, str(weights[0]), metadata)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"modules": str(len(file.modules))}

"""Merging: several KronA files into one, and a KronA file into a full checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from .. import families
from ..files import atomic
from ..files.model import KronAFile
from ..files.writer import build_metadata
from ..naming.kohya import kohya_key, normalize_path, split_kohya_key
from ..naming.unet import UNetKeyMap
from ..ops.matmul import materialise
from ..ops.shapes import KronShape, choose_shape
from .convert import Conversion, ErrorTally, Progress, fit_kronecker
from .errors import ConvertError
from .kinds import Dense, Kronecker, SourceModule
from .sources import Source, load_tensors


def merge_files(files: Sequence[KronAFile], weights: Sequence[float], a1: int | None = None, a2: int | None = None,
                progress: Progress | None = None) -> Conversion:
    """One file from Σ weightᵢ·ΔWᵢ per module: exact where one file holds a module alone, else
    the nearest Kronecker product (at (a1, a2), or the first file's shapes) with its error. It
    keeps what the sources record: base model, targets and trigger words (in order, once each),
    and each source's own record in the provenance. progress(done, total, module) per module."""
    if not files or len(files) != len(weights):
        raise ConvertError("merge needs files and as many weights")
    bases = {f.base_model for f in files if f.base_model}
    if len(bases) > 1:
        raise ConvertError(f"the files are for different base models: {sorted(bases)}")
    names = sorted({n for f in files for n in f.modules})
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    tally = ErrorTally()
    for index, name in enumerate(names):
        if progress:
            progress(index + 1, len(names), name)
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
    title = "+".join(f.name for f in files)[:120]
    metadata = build_metadata(modules, base_model=bases.pop() if bases else None, title=title,
                              trigger_words=list(dict.fromkeys(w for f in files for w in f.trigger_words)),
                              targets=list(dict.fromkeys(t for f in files for t in f.targets)),
                              factor_rule={"mode": "merge"}, provenance=_merged_from(files, weights, tally))
    return Conversion(KronAFile(f"<memory>/{title}", modules, metadata), errors, total)


def _merged_from(files: Sequence[KronAFile], weights: Sequence[float], tally: ErrorTally) -> dict:
    """The sources, each with what it recorded (base, targets, trigger words, training), and the error."""
    sources = [{"name": f.name, "weight": w, "base_model": f.base_model, "targets": f.targets,
                "trigger_words": f.trigger_words, "training": f.training} for f, w in zip(files, weights)]
    return {"merged_from": sources, "total_rel_error": tally.total, "max_layer_rel_error": tally.worst}


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


def _modules_of(adapter: KronAFile | Source) -> dict[str, SourceModule]:
    if isinstance(adapter, KronAFile):
        return {name: Kronecker(name, w1, w2) for name, (w1, w2) in adapter.modules.items()}
    return dict(adapter.modules)


def _base_of(adapter: KronAFile | Source) -> str | None:
    return adapter.base_model if isinstance(adapter, KronAFile) else adapter.base


def _module_weight(tensor: torch.Tensor, slot) -> torch.Tensor:
    """The module's own weight inside a checkpoint tensor (a row block of a fused one, or transposed)."""
    if slot.rows:
        index, count = slot.rows
        size = tensor.shape[0] // count
        return tensor[index * size:(index + 1) * size]
    return tensor.T if slot.transposed else tensor


class _Checkpoint:
    """A single-file checkpoint's tensors, its family and where each kohya module's weight lives."""

    def __init__(self, path: str, adapter: KronAFile | Source):
        self.path = path
        self.tensors, self.metadata = load_tensors(path)
        shapes = {k: tuple(v.shape) for k, v in self.tensors.items()}
        family = families.detect(shapes)
        if family is None:
            raise ConvertError(f"{path}: not a single-file checkpoint of a known family ({', '.join(families.names())})")
        self.base = family.name
        if _base_of(adapter) and _base_of(adapter) != self.base:
            raise ConvertError(f"{getattr(adapter, 'path', '')}: the file is for {_base_of(adapter)}, {path} is {self.base}")
        self.slots = family.checkpoint_modules(shapes)

    def check_names(self, adapter: KronAFile | Source, names) -> None:
        """All modules at once, before any ΔW is formed."""
        missing = [n for n in names if n not in self.slots]
        if missing:
            raise ConvertError(f"{adapter.path}: {len(missing)} module(s) have no weight in {self.path}, e.g. {missing[:3]}")

    def weight(self, name: str, module: SourceModule) -> torch.Tensor:
        slot, _ = self.slots[name]
        weight = _module_weight(self.tensors[slot.key], slot)
        if tuple(module.weight_shape[:2]) != tuple(weight.shape[:2]):
            raise ConvertError(f"{name}: the adapter gives {list(module.weight_shape)}, the checkpoint weight is "
                               f"{list(weight.shape)}")
        return weight

    def add(self, name: str, delta: torch.Tensor) -> None:
        slot, _ = self.slots[name]
        self.tensors[slot.key] = _add(self.tensors[slot.key], delta, slot.rows, slot.transposed)


def checkpoint_naming(path: str | os.PathLike) -> tuple[str, UNetKeyMap | None]:
    """The family of a single-file checkpoint and its UNet layout, from its header alone (what
    `read_source` needs to name a file's modules for this checkpoint)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), "pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise ConvertError(f"{path}: cannot read as safetensors ({exc})") from None
    family = families.detect(shapes)
    if family is None:
        raise ConvertError(f"{path}: not a single-file checkpoint of a known family ({', '.join(families.names())})")
    return family.name, family.layout_map(k for k in shapes if k.startswith("model.diffusion_model."))


def bind_base(source: Source, checkpoint: str | os.PathLike) -> Source:
    """The source with its base-dependent (DoRA) modules replaced by the ΔW they give on this
    checkpoint's weights, as the hosts apply them."""
    ckpt = _Checkpoint(os.fspath(checkpoint), source)
    ckpt.check_names(source, [n for n, m in source.modules.items() if m.needs_base])
    modules = {name: Dense(name, module.delta_on(ckpt.weight(name, module).float()).float()) if module.needs_base else module
               for name, module in source.modules.items()}
    return dataclasses.replace(source, modules=modules, base=source.base or ckpt.base)


def merge_into_checkpoint(checkpoint: str | os.PathLike, adapter: KronAFile | Source, strength: float, out: str | os.PathLike,
                          progress: Progress | None = None) -> dict[str, str]:
    """Bake strength·ΔW of a KronA file or any adapter source (`read_source`: LoKr of every
    trainer, DoRA-LoKr applied as the hosts apply it, LoRA) into a single-file (ldm/SGM)
    checkpoint, written to a new file."""
    checkpoint, out = os.fspath(checkpoint), os.fspath(out)
    if os.path.exists(out):
        raise ConvertError(f"{out}: already exists; nothing was overwritten")
    ckpt = _Checkpoint(checkpoint, adapter)
    modules = _modules_of(adapter)
    ckpt.check_names(adapter, modules)
    for index, (name, module) in enumerate(sorted(modules.items())):
        weight = ckpt.weight(name, module)
        ckpt.add(name, module.delta_on(weight.float()).float() * strength)
        if progress:
            progress(index + 1, len(modules), name)
    name = adapter.name if isinstance(adapter, KronAFile) else os.path.basename(adapter.path)
    metadata = {**ckpt.metadata, "krona.merged": json.dumps({"file": name, "strength": strength, "modules": len(modules)})}
    try:
        atomic.write_safetensors(out, ckpt.tensors, metadata)
    except FileExistsError:
        raise ConvertError(f"{out}: already exists; nothing was overwritten") from None
    return {"base": ckpt.base, "modules": str(len(modules))}


def merge_into_diffusers(folder: str | os.PathLike, file: KronAFile, strength: float, out: str | os.PathLike,
                         progress: Progress | None = None) -> dict[str, str]:
    """Bake strength·ΔW into a diffusers model folder, written as a new folder."""
    from safetensors.torch import save_file

    folder, out = Path(folder), Path(out)
    if out.exists():
        raise ConvertError(f"{out}: already exists; nothing was overwritten")
    by_network: dict[str, dict[str, tuple]] = {}
    for name, factors in file.modules.items():
        by_network.setdefault(split_kohya_key(name)[0], {})[name] = factors
    family = families.find(file.base_model) or next((f for f in families.FAMILIES if set(by_network) <= set(f.networks)), None)
    if family is None:
        raise ConvertError(f"{file.path}: no known base model has the networks {sorted(by_network)}")
    staging = Path(tempfile.mkdtemp(prefix=".krona-merge-", dir=out.parent))
    os.chmod(staging, 0o777 & ~atomic.current_umask())  # a plain mkdir's mode, not mkdtemp's 0700
    try:
        shutil.copytree(folder, staging, dirs_exist_ok=True)
        done = 0
        for network, modules in by_network.items():
            sub = staging / family.diffusers_name(network)
            weights = [p for p in sub.glob("*.safetensors")]
            if len(weights) != 1:
                raise ConvertError(f"{folder / sub.name}: expected one .safetensors weight file, found {len(weights)}")
            tensors, metadata = load_tensors(weights[0])
            module_paths = [k[: -len(".weight")] for k in tensors if k.endswith(".weight")]
            if network == "unet":
                unet_map = UNetKeyMap.from_names(module_paths)
                table = {alias: path for path in module_paths for alias in unet_map.kohya_aliases(path)}
            else:
                table = {kohya_key(network, normalize_path(network, p)): p for p in module_paths}
            for name, (w1, w2) in modules.items():
                if name not in table:
                    raise ConvertError(f"{file.path}: {name} has no weight in {weights[0]}")
                key = table[name] + ".weight"
                delta = materialise(w1.float(), w2.float()) * strength
                tensors[key] = _add(tensors[key], delta, None, False)
                if progress:
                    done += 1
                    progress(done, len(file.modules), name)
            save_file(tensors, str(weights[0]), metadata)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"modules": str(len(file.modules))}

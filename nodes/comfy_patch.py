"""KronA files → ComfyUI patches, through ComfyUI's own machinery only.

Merge mode: a `KronAWeightAdapter` per weight, handed to `ModelPatcher.add_patches` like any
LoRA/LoKr patch, so it stacks with LoRAs, follows offloading/low-VRAM casting and disappears
with the patcher clone. Bypass mode: a `PatcherInjection` that registers forward hooks adding
strength · kron(w1, w2) x with the efficient Kronecker matmul while the model is loaded, and
removes them when ComfyUI ejects the model.

Names are resolved with ComfyUI's own LoRA key maps (`comfy.lora.model_lora_keys_unet/clip`),
so every architecture ComfyUI maps works. Every shape is checked before the patcher is cloned:
a file that does not fit raises and leaves the graph's model untouched.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field

import comfy.lora
import comfy.utils
import comfy.weight_adapter
import torch
from comfy.patcher_extension import PatcherInjection

from ..krona_core import families
from ..krona_core.adapters.blocks import BlockStrengths
from ..krona_core.files.model import KronAFile
from ..krona_core.naming.kohya import TEXT_PREFIXES
from ..krona_core.ops.bypass import ConvSpec, RowSlice, add_kron_delta, scaled_w1
from ..krona_core.ops.shapes import KronShape
from .comfy_adapter import KronAWeightAdapter

log = logging.getLogger("ComfyUI-KronA")
_injection_ids = itertools.count()


class KronAApplyError(ValueError):
    """A file that cannot be applied to the connected model (shown as the node's error)."""


def model_type(patcher) -> str:
    """ComfyUI's name of a ModelPatcher's model family (e.g. SD15, SDXL)."""
    config = getattr(getattr(patcher, "model", None), "model_config", None)
    return type(config).__name__ if config is not None else type(getattr(patcher, "model", patcher)).__name__


def model_family(patcher) -> families.Family | None:
    """The model family of a ModelPatcher (from ComfyUI's model_config class)."""
    return families.for_comfy_model(model_type(patcher))


def model_base(patcher) -> str | None:
    family = model_family(patcher)
    return family.name if family is not None else None


@dataclass
class Target:
    """One file module resolved to a weight of the host model."""

    file_key: str  # kohya module name in the file
    weight_key: str  # key in the patcher's model state dict
    offset: tuple[int, int, int] | None  # (dim, start, size) for fused weights
    w1: torch.Tensor
    w2: torch.Tensor


@dataclass
class Resolution:
    targets: list[Target] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


def _weight(module: torch.nn.Module, key: str) -> torch.Tensor:
    return comfy.utils.get_attr(module, key)


def resolve(file: KronAFile, patcher, key_map: dict, prefixes: tuple[str, ...], what: str) -> Resolution:
    """Map the file's modules with these kohya prefixes onto `patcher`'s weights; check shapes."""
    result = Resolution()
    model = patcher.model
    for name in sorted(file.modules):
        if not name.startswith(prefixes):
            continue
        target = key_map.get(name)
        if target is None:
            result.unmatched.append(name)
            continue
        weight_key, offset = (target[0], target[1]) if isinstance(target, tuple) else (target, None)
        w1, w2 = file.modules[name]
        # the logical shape: ComfyUI's quantised weights (fp8 / mxfp8 / nvfp4 QuantizedTensor) report
        # their dequantised shape in .shape, their storage in .storage_shape
        shape = list(_weight(model, weight_key).shape)
        if offset is not None:
            shape[offset[0]] = offset[2]
        produced = list(KronShape.from_factors(w1.shape, w2.shape).weight_shape)
        if produced != shape and not (len(produced) == 2 and len(shape) == 4 and shape[2:] == [1, 1] and produced == shape[:2]):
            raise KronAApplyError(
                f"{file.path}: {name}: factors {list(w1.shape)} ⊗ {list(w2.shape)} give a {produced} weight, but "
                f"{what} weight {weight_key} is {shape}. The file is for {file.base_model or 'another model'}, "
                f"the connected model is {model_type(patcher)}."
            )
        result.targets.append(Target(name, weight_key, offset, w1, w2))
    return result


def unet_key_map(patcher) -> dict:
    return comfy.lora.model_lora_keys_unet(patcher.model, {})


def clip_key_map(clip) -> dict:
    return comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})


def add_merge_patches(patcher, resolution: Resolution, strength: float, blocks: BlockStrengths | None = None) -> int:
    """Add one weight-adapter patch per target (grouped by per-block multiplier)."""
    groups: dict[float, dict] = {}
    for t in resolution.targets:
        multiplier = blocks(t.weight_key) if blocks is not None else 1.0
        key = (t.weight_key, t.offset) if t.offset is not None else t.weight_key
        groups.setdefault(multiplier, {})[key] = KronAWeightAdapter({t.file_key + ".lokr_w1", t.file_key + ".lokr_w2"}, (t.w1, t.w2))
    added = 0
    for multiplier, patches in groups.items():
        added += len(patcher.add_patches(patches, strength * multiplier))
    return added


class _BypassHook:
    """Forward hook adding strength · (x through kron(w1, w2)) to one module's output, with
    krona_core's one bypass forward (fused-row slices, conv padding modes included)."""

    def __init__(self, target: Target, strength: float):
        self.target = target
        self.strength = strength
        self.rows = RowSlice(target.offset[1], target.offset[2]) if target.offset is not None else None
        self.cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(strength · w1, w2) on x's device and dtype, cast once per device and dtype."""
        key = (x.device, x.dtype)
        if key not in self.cache:  # one entry per device and dtype (deep clones may run on several GPUs)
            self.cache[key] = (scaled_w1(self.target.w1, self.strength, x.dtype, x.device), self.target.w2.to(x.device, x.dtype))
        return self.cache[key]

    def __call__(self, module, args, output):
        x = args[0]
        w1, w2 = self.factors(x)
        return add_kron_delta(output, x, w1, w2, _conv_spec(module), rows=self.rows)


def _conv_spec(module: torch.nn.Module) -> ConvSpec | None:
    """Conv parameters of a layer, also of quantised layers that are not nn.Conv2d subclasses (as
    ComfyUI's own bypass tells them: by class name)."""
    if isinstance(module, torch.nn.Conv2d):
        return ConvSpec.of(module)
    if "conv" not in type(module).__name__.lower():
        return None
    return ConvSpec(tuple(getattr(module, "stride", (1, 1))), getattr(module, "padding", (0, 0)),
                    tuple(getattr(module, "dilation", (1, 1))), getattr(module, "padding_mode", "zeros"),
                    tuple(getattr(module, "_reversed_padding_repeated_twice", ())))


def add_bypass_injection(patcher, resolution: Resolution, strength: float, blocks: BlockStrengths | None = None) -> str:
    """Add ΔW·x in the forward pass through a PatcherInjection (hooked on load, unhooked on unload).

    Clones share their injections (ComfyUI copies the list, not the objects) and a multi-GPU deep
    clone runs the same injection on its own copy of the model, so hooks are kept per model
    instance: each model is hooked once, and ejecting one leaves the others adapted."""
    hooks = []
    for t in resolution.targets:
        if t.offset is not None and t.offset[0] != 0:
            raise KronAApplyError(f"{t.file_key}: bypass mode cannot patch a slice along dim {t.offset[0]} of {t.weight_key}; use merge mode")
        multiplier = blocks(t.weight_key) if blocks is not None else 1.0
        hooks.append(_BypassHook(t, strength * multiplier))
    undo: dict[int, list] = {}  # id(model) → what unhooks it

    def inject(model_patcher) -> None:
        if id(model_patcher.model) not in undo:
            undo[id(model_patcher.model)] = _hook(model_patcher, hooks)

    def eject(model_patcher) -> None:
        for step in undo.pop(id(model_patcher.model), []):
            step()

    key = f"krona_bypass_{next(_injection_ids)}"
    patcher.set_injections(key, [PatcherInjection(inject=inject, eject=eject)])
    return key


def _hook(model_patcher, hooks: list[_BypassHook]) -> list:
    """Hook one model instance: whole weights through ComfyUI's own BypassInjectionManager (calling
    KronAWeightAdapter.h) where the host has it, fused-row slices and older hosts through the pack's
    forward hook. Returns the steps that undo it."""
    manager_class = getattr(comfy.weight_adapter, "BypassInjectionManager", None)
    model = model_patcher.model
    native = [h for h in hooks if manager_class is not None and h.rows is None]
    own = [h for h in hooks if h not in native]
    steps = [model.get_submodule(h.target.weight_key.removesuffix(".weight")).register_forward_hook(h).remove for h in own]
    if native:
        manager = manager_class()
        for h in native:  # one adapter per hook: the manager sets per-layer attributes on it
            manager.add_adapter(h.target.weight_key, KronAWeightAdapter(set(), (h.target.w1, h.target.w2)), strength=h.strength)
        for injection in manager.create_injections(model):
            injection.inject(model_patcher)
            steps.append(lambda injection=injection: injection.eject(model_patcher))
    return steps


def apply_to(model, clip, file: KronAFile, strength_model: float, strength_clip: float,
             bypass: bool = False, blocks: BlockStrengths | None = None):
    """Clone and patch (model, clip) with a KronA file; (new_model, new_clip, report lines)."""
    for label, value in (("strength_model", strength_model), ("strength_clip", strength_clip)):
        if not math.isfinite(float(value)):
            raise KronAApplyError(f"{label} must be a finite number, got {value}")
    report: list[str] = []
    unet = resolve(file, model, unet_key_map(model), ("lora_unet_",), "UNet") if model is not None else None
    te = resolve(file, clip.patcher, clip_key_map(clip), TEXT_PREFIXES, "text-encoder") if clip is not None else None
    has_unet = any(k.startswith("lora_unet_") for k in file.modules)
    has_te = any(k.startswith("lora_te") for k in file.modules)
    matched = (len(unet.targets) if unet else 0) + (len(te.targets) if te else 0)
    if matched == 0:
        kinds = model_type(model) if model is not None else "no model"
        raise KronAApplyError(
            f"{file.path}: none of its {len(file.modules)} modules match the connected model ({kinds}"
            f"{', with CLIP' if clip is not None else ''}); the file is for {file.base_model or 'an unknown base model'}"
        )
    for part, label in ((unet, "UNet"), (te, "text encoder")):
        if part and part.unmatched:
            message = f"{file.name}: {len(part.unmatched)} {label} module(s) not found in the model, e.g. {part.unmatched[:3]}"
            log.warning(message)
            report.append("warning: " + message)
    if has_te and clip is None:
        report.append("note: the file adapts the text encoder too; connect CLIP to apply it")

    new_model, new_clip = model, clip
    if unet is not None and unet.targets:
        new_model = model.clone()
        if bypass:
            add_bypass_injection(new_model, unet, strength_model, blocks)
        else:
            add_merge_patches(new_model, unet, strength_model, blocks)
        report.append(f"UNet: {len(unet.targets)} modules ({'bypass' if bypass else 'merge'}, strength {strength_model:g}"
                      + (f", blocks {blocks.describe()}" if blocks is not None and not blocks.is_uniform else "") + ")")
    elif model is not None and has_unet:
        report.append("UNet: no module matched")
    if te is not None and te.targets:
        new_clip = clip.clone()
        if bypass:
            add_bypass_injection(new_clip.patcher, te, strength_clip)
        else:
            add_merge_patches(new_clip.patcher, te, strength_clip)
        report.append(f"text encoder: {len(te.targets)} modules (strength {strength_clip:g})")
    return new_model, new_clip, report

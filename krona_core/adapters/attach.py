"""attach(): trainable KronA adapters on the matching layers of any torch model."""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .. import families
from ..naming.kohya import KeyMapError, detect_naming
from ..ops.bypass import RowSlice
from ..ops.shapes import KronShape, choose_shape, lycoris_shape, plan_budget
from .layers import KronAAdapter, KronANetwork, Site
from .targets import select


def detect_network(model: nn.Module) -> tuple[str | None, str | None]:
    """(network, family name) of a model from its module names and shapes, None where it cannot tell."""
    names = [n for n, _ in model.named_modules() if n]
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    try:
        style = detect_naming(names)
    except KeyMapError:
        family = families.detect(shapes)  # a diffusion transformer (Flux, SD3, …), diffusers or ComfyUI names
        return ("unet", family.name) if family is not None else (None, None)
    if style in ("diffusers", "ldm"):
        family = families.detect(shapes)
        return "unet", family.name if family else None
    # a text encoder: its width tells the family (a 768-wide CLIP-L is SD1's by priority)
    for n, m in model.named_modules():
        if n.endswith("self_attn.q_proj") and isinstance(m, nn.Linear):
            found = families.for_text_encoder(m.in_features)
            return (found[0], found[1].name) if found else ("te", None)
    return "te", None


def attach(
    model: nn.Module,
    a1: int = 64,
    a2: int = 8,
    targets: str | Sequence[str] = "attn",
    *,
    exclude: str | Sequence[str] | None = None,
    budget: int | None = None,
    shapes: Mapping[str, KronShape] | None = None,
    network: str | None = None,
    base: str | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = None,
    strength: float = 1.0,
    lycoris_compatible: bool = False,
    fused: Mapping[str, Sequence[tuple[str, RowSlice]]] | None = None,
) -> KronANetwork:
    """Add trainable KronA adapters to the matching Linear/Conv2d modules of `model`.

    Factor shapes come from (a1, a2) with the divisor fallback (`kron.choose_shape`), or from a
    total parameter `budget` (`kron.plan_budget`), or explicitly per module path (`shapes`,
    which also fixes the module set). `network`/`base` name the adapters in saved files
    (detected from the model when omitted). Factors follow each base layer's device and dtype
    unless `dtype` is given. lycoris_compatible picks square w1 factors of about a1 × a1 that
    LyCORIS's own loader can read back (`kron.lycoris_shape`); every host UI reads any shape.
    `fused` names fused weights whose rows several modules compute, {weight path: [(module path,
    its rows), …]}: where the targets select those modules, ONE factor pair of the fused shape
    adapts them all, under the fused weight's path (a diffusers Flux's `to_qkv` + `proj_mlp` as
    the original `single_blocks.N.linear1`).
    """
    detected_network, detected_base = detect_network(model)
    network = network or detected_network
    base = base or detected_base
    units = _fuse(_chosen_modules(model, targets, exclude, shapes), fused or {})
    plan, rule = _plan({p: shape for p, (_, shape) in units.items()}, a1, a2, budget, shapes, lycoris_compatible)
    handle = KronANetwork(model, network, base)
    handle.targets = [targets] if isinstance(targets, str) else list(targets)
    handle.rule = rule
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, (sites, shape) in units.items():
            fused_rows = shape[0] if sites[0][1] is not None else None
            adapter = KronAAdapter(sites[0][0], plan[path], dtype=dtype, generator=generator, fused_rows=fused_rows)
            adapter.strength = float(strength)
            handle._add(path, sites, adapter)
    return handle


def _fuse(chosen: list[tuple[str, nn.Module]], fused: Mapping[str, Sequence[tuple[str, RowSlice]]]
          ) -> dict[str, tuple[list[Site], tuple[int, ...]]]:
    """{adapter path: (its sites, the weight shape it adapts)}: a chosen module on its own, or the
    chosen modules of a fused weight as one unit under the weight's path (all of them, or refused)."""
    owner = {module: weight for weight, parts in fused.items() for module, _ in parts}
    modules = dict(chosen)
    units: dict[str, tuple[list[Site], tuple[int, ...]]] = {}
    for path, module in chosen:
        weight = owner.get(path)
        if weight is None:
            units[path] = ([(module, None)], tuple(module.weight.shape))
        elif weight not in units:
            parts = fused[weight]
            missing = [p for p, _ in parts if p not in modules]
            if missing:
                raise ValueError(f"{weight} is one fused weight, adapted as one Kronecker factor pair: the targets select "
                                 f"{path} but not {', '.join(missing)}")
            sites = [(modules[p], window) for p, window in parts]
            rows = max(w.start + w.size for _, w in parts)
            units[weight] = (sites, (rows, *module.weight.shape[1:]))
    return units


def _chosen_modules(model: nn.Module, targets, exclude, shapes: Mapping[str, KronShape] | None) -> list[tuple[str, nn.Module]]:
    if shapes is not None:
        modules = dict(model.named_modules())
        missing = [p for p in shapes if p not in modules]
        if missing:
            raise ValueError(f"{len(missing)} module path(s) not in the model, e.g. {missing[:3]}")
        chosen = [(p, modules[p]) for p in shapes]
    else:
        chosen = select(model.named_modules(), targets, exclude)
    if not chosen:
        raise ValueError(f"no Linear/Conv2d module of {type(model).__name__} matches targets={targets!r}")
    return chosen


def _plan(weight_shapes: dict[str, tuple[int, ...]], a1: int, a2: int, budget: int | None,
          shapes: Mapping[str, KronShape] | None, lycoris_compatible: bool) -> tuple[dict[str, KronShape], dict]:
    """Per-layer factor shapes and the rule that chose them (recorded in the file)."""
    if shapes is not None:
        plan, rule = dict(shapes), {"mode": "explicit"}
    elif budget is not None:
        plan, rule = plan_budget(weight_shapes, budget, a1, a2), {"mode": "budget", "budget": int(budget), "a1": a1, "a2": a2}
    elif lycoris_compatible:
        plan, rule = {p: lycoris_shape(s, a1) for p, s in weight_shapes.items()}, {"mode": "lycoris", "factor": a1}
    else:
        plan, rule = {p: choose_shape(s, a1, a2) for p, s in weight_shapes.items()}, {"mode": "factors", "a1": a1, "a2": a2}
    for p, s in weight_shapes.items():
        if plan[p].weight_shape != s:
            raise ValueError(f"{p}: factor shapes give {plan[p].weight_shape}, layer weight is {s}")
    return plan, rule

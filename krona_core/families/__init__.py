"""The model-family registry: which base model a state dict, a module or a file belongs to.

Every module of this package that defines `FAMILY` is a family; adding one is adding a file
(plus its tests). Detection is spandrel-style, by keys and shapes: each family scores its own
claim on a state dict (`Family.match`) and the strongest claim wins, ties going to the family
with the lower `priority`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pkgutil
from pathlib import Path
from typing import Mapping, Sequence

from ..ops.limits import MAX_DELTA_ELEMENTS
from .base import GENERIC_RECIPE, Family, FamilyError, Match, Recipe


def _discover() -> tuple[Family, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        family = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FAMILY", None)
        if isinstance(family, Family):
            found.append(family)
    return tuple(sorted(found, key=lambda f: f.priority))


FAMILIES: tuple[Family, ...] = _discover()


def delta_limit(family: Family | str | None) -> int:
    """Elements one dense ΔW of a file for `family` (a Family, its name, or None) may hold: the
    stated bound of ops.limits, raised to the family's largest real weight where that is larger."""
    if isinstance(family, str):
        family = find(family)
    largest = math.prod(family.largest_weight) if family is not None and family.largest_weight else 0
    return max(MAX_DELTA_ELEMENTS, largest)


def names() -> tuple[str, ...]:
    return tuple(f.name for f in FAMILIES)


def recipe(family: Family | None) -> Recipe:
    """The training defaults for a base of this family (the generic ones for an unknown base)."""
    return family.recipe if family is not None else GENERIC_RECIPE


def find(name: str | None) -> Family | None:
    """The family called `name` (as files record it in krona.base_model), or None."""
    return next((f for f in FAMILIES if f.name == name), None)


def get(name: str) -> Family:
    family = find(name)
    if family is None:
        raise FamilyError(f"unknown base model {name!r}; expected one of {', '.join(names())}")
    return family


def detect(shapes: Mapping[str, Sequence[int]]) -> Family | None:
    """The family of a state dict (name → weight shape, in any naming the families know), or None."""
    best: tuple[int, int, Family] | None = None
    for family in FAMILIES:
        match = family.match(shapes)
        if match is not None and (best is None or (match.score, -family.priority) > best[:2]):
            best = (match.score, -family.priority, family)
    return best[2] if best else None


def require(shapes: Mapping[str, Sequence[int]], what: str) -> Family:
    """`detect`, or a FamilyError naming `what` and the families that were tried."""
    family = detect(shapes)
    if family is None:
        raise FamilyError(f"{what}: not a model of a known family ({', '.join(f.title for f in FAMILIES)}): "
                          "no single-file text-encoder keys or cross-attention width of theirs")
    return family


def for_text_encoder(width: int) -> tuple[str, Family] | None:
    """(network, family) of a text encoder from its hidden width; the first family by priority wins."""
    for family in FAMILIES:
        network = family.text_encoder_network(width)
        if network is not None:
            return network, family
    return None


def for_comfy_model(model_type: str) -> Family | None:
    """The family of a ComfyUI model_config class name (SD15, SDXL, …)."""
    return next((f for f in FAMILIES if model_type in f.comfy_model_types), None)


def for_diffusers_folder(folder: str | os.PathLike) -> Family | None:
    """The family of a diffusers pipeline folder (or its transformer / unet subfolder), from the
    `_class_name` its config.json records (FluxTransformer2DModel, SD3Transformer2DModel, …), else
    from the pipeline class of its model_index.json (FluxPipeline, StableDiffusion3Pipeline)."""
    folder = Path(folder)
    for config in (folder / "config.json", folder / "transformer" / "config.json"):
        if config.is_file():
            try:
                name = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
            except (OSError, ValueError) as exc:
                raise FamilyError(f"{config}: not a readable diffusers config ({exc})") from None
            return next((f for f in FAMILIES if getattr(f, "diffusers_class", None) == name), None)
    index = folder / "model_index.json"  # a pipeline folder without its transformer (text encoders only)
    if index.is_file():
        try:
            name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError) as exc:
            raise FamilyError(f"{index}: not a readable diffusers model index ({exc})") from None
        return next((f for f in FAMILIES if name and getattr(f, "diffusers_pipeline", None) == name), None)
    return None


def for_ss(ss_base_model_version: str | None) -> Family | None:
    """The family a kohya `ss_base_model_version` names."""
    if not ss_base_model_version:
        return None
    return next((f for f in FAMILIES if f.matches_ss(ss_base_model_version)), None)


__all__ = ["FAMILIES", "Family", "FamilyError", "Match", "Recipe", "detect", "find", "for_comfy_model", "for_diffusers_folder", "for_ss", "for_text_encoder",
           "get", "names", "recipe", "require"]

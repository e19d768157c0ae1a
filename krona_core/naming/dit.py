"""Diffusion-transformer naming: diffusers module paths ↔ the original (ComfyUI) ones.

    diffusers   transformer_blocks.0.attn.to_q             (Flux.1, PEFT: transformer.transformer_blocks.0.attn.to_q)
    original    double_blocks.0.img_attn.qkv  rows 0 … ⅓   (BFL; ComfyUI's diffusion_model.double_blocks.0.img_attn.qkv)
    kohya       lora_unet_double_blocks_0_img_attn_qkv

The original names are the ones ComfyUI's diffusion model has (its `diffusion_model.` state dict),
so ComfyUI's LoraLoader maps `lora_unet_<original path, dots → underscores>` for every architecture.
Where the original stores one fused weight (Flux's qkv and linear1, SD3's qkv, Lumina's qkv), the
diffusers module is a row slice of it: a `Part` of the fused weight. A family's table of `Rule`s
says which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .kohya import KeyMapError

#: prefixes hosts and trainers put before a transformer's own module paths
PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "unet.")


@dataclass(frozen=True)
class Part:
    """Row block `index` of a fused weight whose blocks have the relative sizes `sizes`
    (Flux's linear1: q, k, v, mlp = 1, 1, 1, 4)."""

    index: int
    sizes: tuple[int, ...]

    def rows(self, total: int) -> tuple[int, int]:
        """(start, size) of this block in a fused weight of `total` rows."""
        unit, rest = divmod(total, sum(self.sizes))
        if rest:
            raise KeyMapError(f"a fused weight of {total} rows does not split into parts {self.sizes}")
        return unit * sum(self.sizes[: self.index]), unit * self.sizes[self.index]


@dataclass(frozen=True)
class Rule:
    """One diffusers module path pattern (`{i}` for a block index) and its original path."""

    diffusers: str
    original: str
    part: Part | None = None

    def compiled(self, underscored: bool = False) -> re.Pattern:
        """The pattern of its diffusers path, dotted or fully underscored (`underscored`)."""
        path = self.diffusers.replace(".", "_") if underscored else self.diffusers
        return re.compile(re.escape(path).replace(r"\{i\}", r"(?P<i>\d+)"))


def strip_prefixes(path: str) -> str:
    """A transformer module path without host or trainer prefixes (one of `PREFIXES`)."""
    for prefix in PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


class DiTKeyMap:
    """diffusers → original path map of one transformer family (from its rule table)."""

    def __init__(self, rules: tuple[Rule, ...]):
        self.rules = rules
        self._compiled = [(r.compiled(), r) for r in rules]
        self._underscored = [(r.compiled(underscored=True), r) for r in rules]

    def to_original(self, diffusers_path: str) -> tuple[str, Part | None] | None:
        """(original path, row part of a fused weight or None), or None for a path no rule names."""
        path = strip_prefixes(diffusers_path)
        for pattern, rule in self._compiled:
            m = pattern.fullmatch(path)
            if m is not None:
                return rule.original.format(i=m.groupdict().get("i")), rule.part
        return None

    def dotted(self, underscored: str) -> str | None:
        """The diffusers path of its fully underscored form (`transformer_blocks_0_attn_to_q`, as
        LyCORIS's `lycoris_…` and OneTrainer's `lora_transformer_…` names write it), or None for a
        path no rule names."""
        for pattern, rule in self._underscored:
            m = pattern.fullmatch(underscored)
            if m is not None:
                return rule.diffusers.format(i=m.groupdict().get("i"))
        return None

    def parts_of(self, original_path: str) -> list[tuple[str, Part | None]]:
        """The diffusers module paths that make up one original weight (several for a fused one)."""
        out = []
        for rule in self.rules:
            template = re.escape(rule.original).replace(r"\{i\}", r"(?P<i>\d+)")
            m = re.fullmatch(template, original_path)
            if m is not None:
                out.append((rule.diffusers.format(i=m.groupdict().get("i")), rule.part))
        return out


def signature(dotted: str) -> re.Pattern:
    """A key pattern matching dotted (`double_blocks.N.img_attn.qkv`) and kohya-underscored
    (`double_blocks_0_img_attn_qkv`) names alike; `N` is a block index."""
    text = r"[._]".join(r"\d+" if p == "N" else re.escape(p) for p in dotted.split("."))
    return re.compile(rf"(^|\.|^(?:lora_unet|lycoris|lora_transformer)_){text}([._]|$)")

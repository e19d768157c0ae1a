"""Trainable-parameter counts of KronA, LoRA and full fine-tuning on the real base architectures."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .. import families
from ..ops.shapes import choose_shape, lora_params
from .targets import path_matches


@dataclass(frozen=True)
class ParamCounts:
    base: str
    layers: int
    krona: int
    lora: int
    full: int  # every UNet parameter (full DreamBooth fine-tuning)

    @property
    def krona_vs_lora(self) -> float:
        return self.krona / self.lora - 1.0

    @property
    def krona_vs_full(self) -> float:
        return self.krona / self.full - 1.0


def layer_shapes(family: families.Family, model: nn.Module, targets: str = "attn") -> dict[str, tuple[int, ...]]:
    """{path: weight shape} of the weights of `model` an adapter with these targets sits on (the
    fused ComfyUI weights of a transformer family)."""
    return {p: s for p, s in family.weight_shapes(model).items() if path_matches(p, len(s) == 2, targets)}


def unet_counts(base: str, a1: int = 64, a2: int = 8, rank: int = 4, targets: str = "attn") -> ParamCounts:
    """Counts for a base's real diffusion model built on the meta device (no weights, seconds)."""
    family = families.get(base)
    unet = family.build_unet()
    shapes = layer_shapes(family, unet, targets)
    return ParamCounts(
        base=base,
        layers=len(shapes),
        krona=sum(choose_shape(s, a1, a2).params for s in shapes.values()),
        lora=sum(lora_params(s, rank) for s in shapes.values()),
        full=sum(p.numel() for p in unet.parameters()),
    )


def format_table(rows: list[ParamCounts], a1: int, a2: int, rank: int) -> str:
    names = {"sd1": "SD1.5", "sd2": "SD2.1", "sdxl": "SDXL", "flux1": "FLUX.1 [dev]", "chroma": "Chroma",
             "flux2": "FLUX.2 [dev]", "sd3": "SD3.5 Large", "qwen_image": "Qwen-Image", "lumina2": "Lumina 2",
             "z_image": "Z-Image", "wan": "Wan 2.1 T2V 14B"}  # the real models the rows are built from
    header = f"| base | layers | KronA ({a1}, {a2}) | LoRA r{rank} | KronA vs LoRA | full fine-tune | KronA vs full |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {names.get(r.base, r.base)} | {r.layers} | {r.krona:,} | {r.lora:,} | {r.krona_vs_lora:+.1%} | "
            f"{r.full:,} | {r.krona_vs_full:+.3%} |"
        )
    return "\n".join(lines)

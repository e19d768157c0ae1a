"""kohya adapter names — `lora_unet_<path, dots → underscores>`, `lora_te_…`, `lora_te1_…`,
`lora_te2_…` — and the module-path forms they derive from.

The families of names this package reads (DESIGN.md):
- diffusers UNet paths       down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
- ldm / SGM UNet paths       input_blocks.1.1.transformer_blocks.0.attn1.to_q
- Hugging Face CLIP paths    text_model.encoder.layers.0.self_attn.q_proj
- OpenCLIP paths             transformer.resblocks.0.attn.in_proj_weight
Which base model uses which, and where its weights live in a checkpoint or in ComfyUI, is the
model families' business (`krona_core.families`).
"""

from __future__ import annotations

import re
from typing import Iterable

NETWORKS: tuple[str, ...] = ("unet", "te", "te1", "te2")
KOHYA_PREFIX: dict[str, str] = {"unet": "lora_unet_", "te": "lora_te_", "te1": "lora_te1_", "te2": "lora_te2_"}
TEXT_PREFIXES: tuple[str, ...] = ("lora_te_", "lora_te1_", "lora_te2_")


class KeyMapError(ValueError):
    """A name that does not belong to the naming family it was given as."""


def kohya_key(network: str, module_path: str) -> str:
    """`lora_unet_down_blocks_0_…` from a network and a module path (already in kohya's style)."""
    if network not in KOHYA_PREFIX:
        raise KeyMapError(f"unknown network {network!r}; expected one of {', '.join(NETWORKS)}")
    return KOHYA_PREFIX[network] + module_path.replace(".", "_")


def split_kohya_key(key: str) -> tuple[str, str]:
    """('te1', 'text_model_encoder_…') from 'lora_te1_text_model_encoder_…' (module part only)."""
    for network in ("te1", "te2", "te", "unet"):  # longest prefixes first
        prefix = KOHYA_PREFIX[network]
        if key.startswith(prefix):
            return network, key[len(prefix):]
    raise KeyMapError(f"{key!r} has no kohya prefix ({', '.join(KOHYA_PREFIX.values())})")


def normalize_path(network: str, path: str) -> str:
    """A module path in the style kohya names derive from.

    Strips host wrappers (`diffusion_model.` in ComfyUI, `clip_l.transformer.` and similar) and
    restores the `text_model.` root that transformers ≥ 5 no longer has in CLIPTextModel.
    """
    if network == "unet":
        for prefix in ("model.diffusion_model.", "diffusion_model."):
            if path.startswith(prefix):
                return path[len(prefix):]
        return path
    index = path.find("text_model.")
    if index >= 0:
        return path[index:]
    if path == "text_projection" or path.endswith(".text_projection"):
        return "text_projection"
    return "text_model." + path


def detect_naming(paths: Iterable[str]) -> str:
    """Naming family of a set of UNet or text-encoder module paths/keys."""
    names = list(paths)
    joined = "\n".join(names[:4000])
    if re.search(r"(^|\.)down_blocks\.\d+\.", joined, re.M) or re.search(r"(^|\.)mid_block\.", joined, re.M):
        return "diffusers"
    if re.search(r"(^|\.)input_blocks\.\d+\.", joined, re.M):
        return "ldm"
    if re.search(r"(^|\.)(text_model\.)?encoder\.layers\.\d+\.(self_attn|mlp)", joined, re.M):
        return "hf_clip"  # transformers ≥ 5 drops the text_model. root of CLIPTextModel
    if re.search(r"(^|\.)transformer\.resblocks\.\d+\.", joined, re.M):
        return "open_clip"
    raise KeyMapError("could not tell the naming family (diffusers, ldm, Hugging Face CLIP, OpenCLIP) of these names")

"""What the Stable Diffusion UNet families (SD1.x, SD2.x, SDXL) share: a diffusers
`UNet2DConditionModel` / ldm UNet with cross-attention, CLIP text encoders, kohya naming.

Each family file (sd1.py, sd2.py, sdxl.py) is one `SDFamily` with its own numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from ..naming.clip import WeightSlot, hf_clip_to_open_clip, open_clip_to_hf
from ..naming.kohya import KeyMapError, kohya_key, normalize_path
from ..naming.unet import UNetKeyMap, UNetLayout, dotted_diffusers_unet, strip_unet_prefix, unet_style
from .base import Family, FamilyError, Match, Shapes

CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
CLIP_H = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
              num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
              num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)

#: the SD VAE (all three families), diffusers AutoencoderKL config without its scaling factor
VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, latent_channels=4, sample_size=512,
)

_CROSS_ATTENTION_K = re.compile(r"attn2[._]to_k(\.weight)?$")


@dataclass(frozen=True)
class TextEncoder:
    """One CLIP text encoder of a family."""

    network: str  # te / te1 / te2
    config: dict[str, Any]  # transformers CLIPTextConfig arguments of the real model
    checkpoint_prefix: str  # where it lives in a single-file checkpoint
    comfy_attribute: str  # its attribute on ComfyUI's cond_stage_model (clip_l / clip_h / clip_g)
    open_clip: bool = False  # stored in OpenCLIP form (fused q/k/v) in single-file checkpoints
    projection: bool = False  # CLIPTextModelWithProjection (pooled, projected output)
    diffusers_name: str = "text_encoder"  # its subfolder in a diffusers pipeline (and PEFT key root)

    @property
    def width(self) -> int:
        return int(self.config["hidden_size"])


@dataclass(frozen=True, repr=False)
class SDFamily(Family):
    name: str
    title: str
    unet_config: dict[str, Any]  # diffusers UNet2DConditionModel config of the real model
    text_encoders: tuple[TextEncoder, ...]
    kohya_unet_style: str  # the UNet path style kohya sd-scripts writes: "diffusers" or "ldm"
    checkpoint_marker: str  # a key prefix only this family's single-file checkpoints have
    vae_scaling: float
    ss_prefix: str  # kohya ss_base_model_version starts with this
    metadata_strings: dict[str, str]
    comfy_model_types: frozenset[str]
    priority: int
    fixed_heads: int | None = None  # attention heads per layer when fixed (SD1: 8); else 64-wide heads
    prediction: str = "epsilon"
    size_conditioning: bool = False  # SDXL's micro-conditioning: original size, crop, target size
    default_resolution: int = 512
    default_steps: int = 500
    default_crop: str = "random"  # diffusers' DreamBooth scripts (the official ones' base) without --center_crop
    default_targets: str = "attn"
    unet_prefix: str = "model.diffusion_model."

    # -- structure
    @property
    def networks(self) -> tuple[str, ...]:
        return ("unet", *(t.network for t in self.text_encoders))

    @property
    def cross_attention_dim(self) -> int:
        return int(self.unet_config["cross_attention_dim"])

    def text_encoder(self, network: str) -> TextEncoder:
        for encoder in self.text_encoders:
            if encoder.network == network:
                return encoder
        have = ", ".join(t.network for t in self.text_encoders)
        raise KeyMapError(f"{self.name} has no text encoder network {network!r} (it has {have})")

    def network_of_diffusers(self, name: str) -> str:
        """The network of a diffusers pipeline component ("unet", "text_encoder", "text_encoder_2")."""
        if name == "unet":
            return "unet"
        for encoder in self.text_encoders:
            if encoder.diffusers_name == name:
                return encoder.network
        raise KeyMapError(f"{self.name} has no diffusers component {name!r}")

    def diffusers_name(self, network: str) -> str:
        return "unet" if network == "unet" else self.text_encoder(network).diffusers_name

    def text_encoder_network(self, width: int) -> str | None:
        return next((t.network for t in self.text_encoders if t.width == width), None)

    def layout_map(self, names) -> UNetKeyMap:
        return UNetKeyMap.from_names(names)

    def unet_key_map(self) -> UNetKeyMap:
        """diffusers ↔ ldm map of the real UNet, from its config (no diffusers needed)."""
        c = self.unet_config
        return UNetKeyMap(UNetLayout.from_blocks(c["down_block_types"], c["up_block_types"], c["layers_per_block"]))

    # -- detection
    def match(self, shapes: Shapes) -> Match | None:
        if any(k.startswith(self.checkpoint_marker) for k in shapes):
            return Match(3, f"single-file text-encoder keys {self.checkpoint_marker}*")
        for name, shape in shapes.items():
            if _CROSS_ATTENTION_K.search(name) and len(shape) >= 2:
                if int(shape[1]) == self.cross_attention_dim:
                    return Match(2, f"cross-attention width {shape[1]} at {name}")
                return None
        return None

    def matches_ss(self, ss_base_model_version: str) -> bool:
        return ss_base_model_version.startswith(self.ss_prefix)

    def metadata(self) -> dict[str, str]:
        return dict(self.metadata_strings)

    # -- naming
    def kohya_name(self, network: str, module_path: str, unet_map: UNetKeyMap | None = None) -> str:
        """module_path: diffusers- or ldm-style for the UNet (ComfyUI / checkpoint prefixes allowed;
        converted to this family's kohya style with `unet_map` when the styles differ), Hugging Face
        style for text encoders."""
        if network != "unet":
            self.text_encoder(network)
            return kohya_key(network, normalize_path(network, module_path))
        path = strip_unet_prefix(module_path)
        style = unet_style(path)
        if style is None or style == self.kohya_unet_style:
            return kohya_key("unet", path)
        unet_map = unet_map or self.unet_key_map()
        converted = unet_map.to_ldm(path) if self.kohya_unet_style == "ldm" else unet_map.to_diffusers(path)
        return kohya_key("unet", converted)

    def dotted_path(self, underscored: str) -> str:
        return dotted_diffusers_unet(underscored)

    def checkpoint_slot(self, network: str, param_key: str, unet_map: UNetKeyMap | None = None) -> WeightSlot:
        """param_key: diffusers- or ldm-style for the UNet, Hugging Face style for text encoders."""
        if network == "unet":
            stripped = strip_unet_prefix(param_key)
            if unet_style(stripped) != "ldm":
                stripped = (unet_map or self.unet_key_map()).to_ldm(stripped)
            return WeightSlot(self.unet_prefix + stripped)
        encoder = self.text_encoder(network)
        if encoder.open_clip:
            slot = hf_clip_to_open_clip(param_key)
            return WeightSlot(encoder.checkpoint_prefix + slot.key, slot.rows, slot.transposed)
        return WeightSlot(encoder.checkpoint_prefix + param_key)

    def checkpoint_modules(self, shapes: Shapes) -> dict[str, tuple[WeightSlot, tuple[int, ...]]]:
        """Every 2-D (linear) and 4-D (conv) `.weight` of the UNet and the text encoders; a fused
        OpenCLIP in_proj yields q, k and v entries with their row slots."""
        unet_keys = [k[len(self.unet_prefix):] for k in shapes if k.startswith(self.unet_prefix)]
        if not unet_keys:
            raise FamilyError(f"no {self.unet_prefix}* keys: not a single-file {self.name} checkpoint")
        unet_map = UNetKeyMap.from_names(unet_keys)
        out: dict[str, tuple[WeightSlot, tuple[int, ...]]] = {}
        for key in unet_keys:
            shape = tuple(int(d) for d in shapes[self.unet_prefix + key])
            if key.endswith(".weight") and len(shape) in (2, 4):
                out[self.kohya_name("unet", key[: -len(".weight")], unet_map)] = (WeightSlot(self.unet_prefix + key), shape)
        for encoder in self.text_encoders:
            out.update(_text_encoder_modules(encoder, shapes))
        return out

    # -- real-size models (meta device by default: every name and shape, no memory)
    def build_unet(self, device: str | torch.device = "meta", **overrides: Any) -> torch.nn.Module:
        from diffusers import UNet2DConditionModel

        with torch.device(device):
            return UNet2DConditionModel(**{**self.unet_config, **overrides})

    def build_text_encoder(self, network: str, device: str | torch.device = "meta", **overrides: Any) -> torch.nn.Module:
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        encoder = self.text_encoder(network)
        cls = CLIPTextModelWithProjection if encoder.projection else CLIPTextModel
        with torch.device(device):
            return cls(CLIPTextConfig(**{**encoder.config, **overrides}))


def _text_encoder_modules(encoder: TextEncoder, shapes: Shapes) -> dict[str, tuple[WeightSlot, tuple[int, ...]]]:
    out: dict[str, tuple[WeightSlot, tuple[int, ...]]] = {}
    prefix = encoder.checkpoint_prefix
    for full, raw_shape in shapes.items():
        if not full.startswith(prefix):
            continue
        key, shape = full[len(prefix):], tuple(int(d) for d in raw_shape)
        if len(shape) != 2:
            continue
        if encoder.open_clip:
            if not key.startswith("transformer.resblocks.") or not key.endswith("weight"):
                continue
            for hf in open_clip_to_hf(key):
                slot = hf_clip_to_open_clip(hf)
                rows = shape[0] // 3 if slot.rows else shape[0]
                out[kohya_key(encoder.network, hf[: -len(".weight")])] = (WeightSlot(full, slot.rows, slot.transposed), (rows, shape[1]))
        elif key.endswith(".weight") and ".encoder.layers." in key:
            out[kohya_key(encoder.network, key[: -len(".weight")])] = (WeightSlot(full), shape)
    return out

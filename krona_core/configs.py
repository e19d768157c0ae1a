"""Real-size architecture configs of the supported bases (no weights), and meta-device builders.

Used for parameter tables, key-map tests and benchmarks: building these on the `meta` device
gives every module name and shape of the real models in a second, without downloads.
"""

from __future__ import annotations

from typing import Any

import torch

UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd1": dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
    ),
    "sd2": dict(
        sample_size=96,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
    ),
    "sdxl": dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
}

_CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
_CLIP_H = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
               num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
_CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
               num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)

# (base, network) -> (config, with_projection)
TEXT_ENCODER_CONFIGS: dict[tuple[str, str], tuple[dict[str, Any], bool]] = {
    ("sd1", "te"): (_CLIP_L, False),
    ("sd2", "te"): (_CLIP_H, False),
    ("sdxl", "te1"): (_CLIP_L, False),
    ("sdxl", "te2"): (_CLIP_G, True),
}


def build_unet(base: str, device: str | torch.device = "meta", **overrides: Any) -> torch.nn.Module:
    """A diffusers UNet2DConditionModel of a base's real architecture (meta device: no memory)."""
    from diffusers import UNet2DConditionModel

    config = {**UNET_CONFIGS[base], **overrides}
    with torch.device(device):
        return UNet2DConditionModel(**config)


def build_text_encoder(base: str, network: str, device: str | torch.device = "meta") -> torch.nn.Module:
    """A transformers CLIP text model of a base's real architecture (meta device: no memory)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config, with_projection = TEXT_ENCODER_CONFIGS[(base, network)]
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device(device):
        return cls(CLIPTextConfig(**config))

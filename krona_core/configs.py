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

VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)


def unet_config_from_checkpoint(shapes: dict[str, Any], base: str) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel config read off an ldm/SGM checkpoint's tensor shapes.

    Works for the real SD1.x/SD2.x/SDXL UNets and for reduced or fine-tuned layouts of the same
    family. Head counts are not stored in weights: SD1 uses 8 heads, SD2/SDXL 64-wide heads.
    """
    from .keymap import KeyMapError, UNetLayout

    prefix = "model.diffusion_model."
    names = [k[len(prefix):] for k in shapes if k.startswith(prefix)]
    layout = UNetLayout.from_ldm(names)

    def shape(key: str) -> tuple[int, ...]:
        return tuple(shapes[prefix + key])

    def depth(block: str) -> int:
        start = block + ".transformer_blocks."
        return len({n[len(start):].split(".")[0] for n in names if n.startswith(start)})

    channels, index, depths = [], 1, []
    for level, count in enumerate(layout.resnets):
        channels.append(shape(f"input_blocks.{index}.0.out_layers.3.weight")[0])
        depths.append(depth(f"input_blocks.{index}.1") if layout.down_attention[level] else 1)
        index += count + (1 if layout.downsample[level] else 0)
    up_depths, out_index = [], 0
    for level, count in enumerate(layout.up_resnets):
        up_depths.append([depth(f"output_blocks.{out_index + j}.1") or 1 for j in range(count)])
        out_index += count
    to_k = next((n for n in names if n.endswith("attn2.to_k.weight")), None)
    if to_k is None:
        raise KeyMapError("the UNet has no cross-attention (attn2.to_k): not an SD-family text-to-image UNet")
    proj_in = next(n for n in names if n.endswith("proj_in.weight"))
    mid_depth = depth("middle_block.1") if layout.mid_attention else 1
    if layout.mid_attention and mid_depth != depths[-1]:
        raise KeyMapError(f"middle-block transformer depth {mid_depth} differs from the last level's {depths[-1]}; "
                          "diffusers' UNet2DConditionModel cannot represent this layout")
    config: dict[str, Any] = dict(
        sample_size=128 if base == "sdxl" else 64,
        in_channels=shape("input_blocks.0.0.weight")[1],
        out_channels=shape("out.2.weight")[0],
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in layout.down_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in layout.up_attention),
        mid_block_type="UNetMidBlock2DCrossAttn" if layout.mid_attention else None,
        block_out_channels=tuple(channels),
        layers_per_block=layout.resnets if len(set(layout.resnets)) > 1 else layout.resnets[0],
        transformer_layers_per_block=tuple(depths),
        reverse_transformer_layers_per_block=tuple(tuple(d) for d in up_depths),
        cross_attention_dim=shape(to_k)[1],
        use_linear_projection=len(shape(proj_in)) == 2,
        attention_head_dim=8 if base == "sd1" else tuple(max(1, c // 64) for c in channels),
    )
    if base == "sdxl":
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=shape("label_emb.0.0.weight")[1])
    return config

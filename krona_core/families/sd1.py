"""Stable Diffusion 1.x (SD1.4, SD1.5 and their fine-tunes): one CLIP-L text encoder, ε-prediction."""

from .sd import CLIP_L, SDFamily, TextEncoder

FAMILY = SDFamily(
    name="sd1",
    title="Stable Diffusion 1.x",
    priority=0,  # a 768-wide CLIP alone is read as SD1's (SDXL's first encoder has the same width)
    unet_config=dict(
        sample_size=64, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
    ),
    fixed_heads=8,
    text_encoders=(TextEncoder("te", CLIP_L, "cond_stage_model.transformer.", "clip_l"),),
    kohya_unet_style="diffusers",
    checkpoint_marker="cond_stage_model.transformer.",
    vae_scaling=0.18215,
    ss_prefix="sd_v1",
    metadata_strings={"ss_base_model_version": "sd_v1", "modelspec.architecture": "stable-diffusion-v1/lora",
                      "modelspec.implementation": "diffusers", "modelspec.resolution": "512x512"},
    comfy_model_types=frozenset({"SD15", "SD15_instructpix2pix"}),
)

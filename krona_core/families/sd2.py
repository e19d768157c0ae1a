"""Stable Diffusion 2.x (SD2.0 / 2.1, 512 ε and 768 v): one OpenCLIP-H text encoder."""

from .sd import CLIP_H, SDFamily, TextEncoder

FAMILY = SDFamily(
    name="sd2",
    title="Stable Diffusion 2.x",
    priority=1,
    unet_config=dict(
        sample_size=96, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    ),
    text_encoders=(TextEncoder("te", CLIP_H, "cond_stage_model.model.", "clip_h", open_clip=True),),
    kohya_unet_style="diffusers",
    checkpoint_marker="cond_stage_model.model.",
    vae_scaling=0.18215,
    ss_prefix="sd_v2",
    metadata_strings={"ss_base_model_version": "sd_v2", "modelspec.architecture": "stable-diffusion-v2-512/lora",
                      "modelspec.implementation": "diffusers", "modelspec.resolution": "512x512"},
    comfy_model_types=frozenset({"SD20", "SD21UnclipL", "SD21UnclipH", "SD20_instructpix2pix"}),
)

"""Stable Diffusion XL (base 1.0 and its distillations): CLIP-L + OpenCLIP-bigG, pooled and size
conditioning, kohya names in ldm style; the DiffuseKronA scripts train it 1000 steps at 1024 px."""

from .sd import CLIP_G, CLIP_L, SDFamily, TextEncoder

FAMILY = SDFamily(
    name="sdxl",
    title="Stable Diffusion XL",
    priority=2,
    unet_config=dict(
        sample_size=128, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ),
    text_encoders=(
        TextEncoder("te1", CLIP_L, "conditioner.embedders.0.transformer.", "clip_l"),
        TextEncoder("te2", CLIP_G, "conditioner.embedders.1.model.", "clip_g", open_clip=True, projection=True,
                    diffusers_name="text_encoder_2"),
    ),
    kohya_unet_style="ldm",
    checkpoint_marker="conditioner.embedders.1.",
    vae_scaling=0.13025,
    ss_prefix="sdxl",
    metadata_strings={"ss_base_model_version": "sdxl_base_v1-0", "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
                      "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
                      "modelspec.resolution": "1024x1024"},
    comfy_model_types=frozenset({"SDXL", "SDXL_instructpix2pix", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B"}),
    size_conditioning=True,
    default_resolution=1024,
    default_steps=1000,
)

"""Qwen-Image (Alibaba Qwen): 60 MMDiT blocks with separate (unfused) q/k/v per stream; its
original and ComfyUI names are the diffusers ones; Qwen2.5-VL conditioning; rectified flow."""

from .dit import DiTFamily, Signature

FAMILY = DiTFamily(
    name="qwen_image",
    title="Qwen-Image",
    priority=14,
    diffusers_class="QwenImageTransformer2DModel",
    diffusers_config={},
    rules=(),  # the original names are the diffusers names
    original_roots=frozenset({"transformer_blocks", "img_in", "txt_in", "txt_norm", "time_text_embed", "norm_out", "proj_out"}),
    signatures=(Signature("transformer_blocks.N.img_mod.1", 6), Signature("transformer_blocks.N.img_mlp", 6),
                Signature("transformer_blocks.N.txt_mlp", 6), Signature("transformer_blocks.N.attn.add_q_proj", 3)),
    comfy_model_types=frozenset({"QwenImage"}),
    metadata_strings={"ss_base_model_version": "qwen_image", "modelspec.architecture": "Qwen-Image/lora",
                      "modelspec.implementation": "https://github.com/QwenLM/Qwen-Image",
                      "modelspec.resolution": "1328x1328"},
    ss_prefix="qwen_image",
    default_resolution=1328,
)

"""Z-Image (Tongyi-MAI; Turbo and Base): a NextDiT like Lumina 2 — 30 layers, 3840 wide, fused qkv
with as many key/value heads as query heads (rows 1 : 1 : 1); Qwen3 conditioning; rectified flow.
ComfyUI loads it as a Lumina 2 model (`ZImage` config, newer ComfyUI only)."""

from ..naming.dit import Rule
from .dit import DiTFamily, Signature, qkv_parts
from .lumina2 import NEXTDIT_ROOTS, nextdit_rules

FAMILY = DiTFamily(
    name="z_image",
    title="Z-Image",
    priority=16,
    diffusers_class="ZImageTransformer2DModel",
    diffusers_config={},
    rules=(*nextdit_rules("attention", ("w1", "w2", "w3"), qkv_parts(), None),
           Rule("all_x_embedder.2-1", "x_embedder"), Rule("all_final_layer.2-1.linear", "final_layer.linear"),
           Rule("all_final_layer.2-1.adaLN_modulation.1", "final_layer.adaLN_modulation.1")),
    original_roots=NEXTDIT_ROOTS,
    signatures=(Signature("layers.N.attention.qkv", 6, qkv_ratio=(3, 1)), Signature("all_x_embedder", 7),
                Signature("layers.N.attention.to_q", 5)),
    comfy_model_types=frozenset({"ZImage"}),
    metadata_strings={"ss_base_model_version": "z_image", "modelspec.architecture": "z-image/lora",
                      "modelspec.implementation": "https://github.com/Tongyi-MAI/Z-Image",
                      "modelspec.resolution": "1024x1024"},
    ss_prefix="z_image",
)

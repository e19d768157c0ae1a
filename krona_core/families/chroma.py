"""Chroma (lodestones): FLUX.1 [schnell]'s blocks without per-block modulation, which a
distilled guidance network (`distilled_guidance_layer`) computes instead; T5-XXL only."""

from ..naming.dit import Rule
from .dit import DiTFamily, Signature, block_rules
from .flux1 import DOUBLE, SINGLE

FAMILY = DiTFamily(
    name="chroma",
    title="Chroma",
    priority=11,
    diffusers_class="ChromaTransformer2DModel",
    diffusers_config={},
    rules=(*block_rules("transformer_blocks", "double_blocks", DOUBLE),
           *block_rules("single_transformer_blocks", "single_blocks", SINGLE),
           *block_rules("distilled_guidance_layer.layers", "distilled_guidance_layer.layers",
                        (("linear_1", "in_layer", None), ("linear_2", "out_layer", None))),
           Rule("x_embedder", "img_in"), Rule("context_embedder", "txt_in"), Rule("proj_out", "final_layer.linear")),
    original_roots=frozenset({"double_blocks", "single_blocks", "img_in", "txt_in", "final_layer", "distilled_guidance_layer"}),
    signatures=(Signature("distilled_guidance_layer", 7), Signature("double_blocks.N.img_attn.qkv", 5),
                Signature("single_transformer_blocks.N.attn.to_q", 5)),
    comfy_model_types=frozenset({"Chroma", "ChromaRadiance"}),
    metadata_strings={"ss_base_model_version": "chroma", "modelspec.architecture": "chroma/lora",
                      "modelspec.implementation": "https://huggingface.co/lodestones/Chroma",
                      "modelspec.resolution": "1024x1024"},
    ss_prefix="chroma",
)

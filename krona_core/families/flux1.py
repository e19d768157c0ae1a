"""FLUX.1 [dev] / [schnell] (Black Forest Labs): 19 double-stream blocks (image and text streams,
fused qkv), 38 single-stream blocks (linear1 = q, k, v and the MLP input fused; linear2 = attention
output and MLP output fused), T5-XXL + CLIP-L conditioning; rectified flow."""

from ..naming.dit import Rule
from .dit import DiTFamily, Signature, block_rules, qkv_parts
from .flow import FLUX_SIGMAS

Q, K, V = qkv_parts()
SQ, SK, SV, SMLP = qkv_parts((1, 1, 1, 4))  # linear1 rows: q, k, v (hidden each), MLP input (4 × hidden)

#: diffusers (FluxTransformer2DModel) → BFL / ComfyUI, as ComfyUI's own map (comfy.utils.flux_to_diffusers)
DOUBLE = (
    ("attn.to_q", "img_attn.qkv", Q), ("attn.to_k", "img_attn.qkv", K), ("attn.to_v", "img_attn.qkv", V),
    ("attn.add_q_proj", "txt_attn.qkv", Q), ("attn.add_k_proj", "txt_attn.qkv", K), ("attn.add_v_proj", "txt_attn.qkv", V),
    ("attn.to_qkv", "img_attn.qkv", None), ("attn.to_added_qkv", "txt_attn.qkv", None),  # diffusers' fuse_qkv_projections
    ("attn.to_out.0", "img_attn.proj", None), ("attn.to_add_out", "txt_attn.proj", None),
    ("ff.net.0.proj", "img_mlp.0", None), ("ff.net.2", "img_mlp.2", None),
    ("ff_context.net.0.proj", "txt_mlp.0", None), ("ff_context.net.2", "txt_mlp.2", None),
)
SINGLE = (
    ("attn.to_q", "linear1", SQ), ("attn.to_k", "linear1", SK), ("attn.to_v", "linear1", SV),
    ("proj_mlp", "linear1", SMLP), ("proj_out", "linear2", None),
)
# norm_out.linear is not mapped: ComfyUI's final adaLN stores (shift, scale) where diffusers has (scale, shift)
TOP = (
    Rule("x_embedder", "img_in"), Rule("context_embedder", "txt_in"), Rule("proj_out", "final_layer.linear"),
    Rule("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
    Rule("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
    Rule("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
    Rule("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
    Rule("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
    Rule("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
)

FAMILY = DiTFamily(
    name="flux1",
    title="FLUX.1",
    priority=10,
    diffusers_class="FluxTransformer2DModel",
    diffusers_pipeline="FluxPipeline",
    diffusers_config=dict(guidance_embeds=True),  # [dev]; [schnell] has no guidance embedder
    rules=(*block_rules("transformer_blocks", "double_blocks", DOUBLE + (
               ("norm1.linear", "img_mod.lin", None), ("norm1_context.linear", "txt_mod.lin", None))),
           *block_rules("single_transformer_blocks", "single_blocks", SINGLE + (("norm.linear", "modulation.lin", None),)),
           *TOP),
    original_roots=frozenset({"double_blocks", "single_blocks", "img_in", "txt_in", "time_in", "vector_in", "guidance_in",
                              "final_layer"}),
    signatures=(Signature("double_blocks.N.img_mod.lin", 6), Signature("single_blocks.N.modulation.lin", 6),
                Signature("single_transformer_blocks.N.norm.linear", 6), Signature("double_blocks.N.img_attn.qkv", 5),
                Signature("single_blocks.N.linear1", 5), Signature("single_transformer_blocks.N.attn.to_q", 5)),
    comfy_model_types=frozenset({"Flux", "FluxInpaint", "FluxSchnell", "FluxKontext"}),
    metadata_strings={"ss_base_model_version": "flux1", "modelspec.architecture": "flux-1-dev/lora",
                      "modelspec.implementation": "https://github.com/black-forest-labs/flux",
                      "modelspec.resolution": "1024x1024"},
    ss_prefix="flux1",
    sigma_sampling=FLUX_SIGMAS,
)

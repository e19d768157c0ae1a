"""FLUX.2 [dev] / [klein] (Black Forest Labs): double- and single-stream blocks like FLUX.1 with
modulation shared across blocks, gated MLPs (img_mlp.0 = gate and up fused), single blocks whose
linear1 fuses q, k, v and the gated MLP input (fused in diffusers too: `to_qkv_mlp_proj`)."""

from ..naming.dit import Rule
from .dit import DiTFamily, Signature, block_rules
from .flux1 import DOUBLE

DOUBLE2 = tuple(row for row in DOUBLE if not row[0].startswith(("ff.", "ff_context."))) + (
    ("ff.linear_in", "img_mlp.0", None), ("ff.linear_out", "img_mlp.2", None),
    ("ff_context.linear_in", "txt_mlp.0", None), ("ff_context.linear_out", "txt_mlp.2", None),
)

FAMILY = DiTFamily(
    name="flux2",
    title="FLUX.2",
    priority=12,
    diffusers_class="Flux2Transformer2DModel",
    diffusers_config={},
    rules=(*block_rules("transformer_blocks", "double_blocks", DOUBLE2),
           *block_rules("single_transformer_blocks", "single_blocks",
                        (("attn.to_qkv_mlp_proj", "linear1", None), ("attn.to_out", "linear2", None))),
           Rule("x_embedder", "img_in"), Rule("context_embedder", "txt_in"), Rule("proj_out", "final_layer.linear"),
           Rule("time_guidance_embed.timestep_embedder.linear_1", "time_in.in_layer"),
           Rule("time_guidance_embed.timestep_embedder.linear_2", "time_in.out_layer"),
           Rule("time_guidance_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
           Rule("time_guidance_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
           Rule("double_stream_modulation_img.linear", "double_stream_modulation_img.lin"),
           Rule("double_stream_modulation_txt.linear", "double_stream_modulation_txt.lin"),
           Rule("single_stream_modulation.linear", "single_stream_modulation.lin")),
    original_roots=frozenset({"double_blocks", "single_blocks", "img_in", "txt_in", "time_in", "guidance_in", "final_layer",
                              "double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation"}),
    signatures=(Signature("double_stream_modulation_img", 7), Signature("single_stream_modulation", 7),
                Signature("single_transformer_blocks.N.attn.to_qkv_mlp_proj", 7), Signature("double_blocks.N.img_attn.qkv", 5)),
    comfy_model_types=frozenset({"Flux2"}),
    metadata_strings={"ss_base_model_version": "flux2", "modelspec.architecture": "Flux.2-dev/lora",
                      "modelspec.implementation": "https://github.com/black-forest-labs/flux2",
                      "modelspec.resolution": "1024x1024"},
    ss_prefix="flux2",
    latent_channels=32,
)

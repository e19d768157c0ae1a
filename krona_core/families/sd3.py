"""Stable Diffusion 3 / 3.5 (Stability AI's MMDiT): joint blocks with an image (`x_block`) and a
text (`context_block`) stream, fused qkv per stream, SD3.5 Medium's second image attention
(`attn2`); CLIP-L + CLIP-G + T5-XXL conditioning; rectified flow. The real model here is SD3.5 Large."""

from ..naming.dit import Rule
from .dit import DiTFamily, Signature, block_rules, qkv_parts
from .flow import SD3_SIGMAS

Q, K, V = qkv_parts()

# the text stream's adaLN modulation is not mapped: the last block's context_block stores (shift, scale) swapped
JOINT = (
    ("norm1.linear", "x_block.adaLN_modulation.1", None),
    ("attn.to_q", "x_block.attn.qkv", Q), ("attn.to_k", "x_block.attn.qkv", K), ("attn.to_v", "x_block.attn.qkv", V),
    ("attn.add_q_proj", "context_block.attn.qkv", Q), ("attn.add_k_proj", "context_block.attn.qkv", K),
    ("attn.add_v_proj", "context_block.attn.qkv", V),
    ("attn.to_qkv", "x_block.attn.qkv", None), ("attn.to_added_qkv", "context_block.attn.qkv", None),  # fused (diffusers)
    ("attn2.to_qkv", "x_block.attn2.qkv", None),
    ("attn.to_out.0", "x_block.attn.proj", None), ("attn.to_add_out", "context_block.attn.proj", None),
    ("attn2.to_q", "x_block.attn2.qkv", Q), ("attn2.to_k", "x_block.attn2.qkv", K), ("attn2.to_v", "x_block.attn2.qkv", V),
    ("attn2.to_out.0", "x_block.attn2.proj", None),
    ("ff.net.0.proj", "x_block.mlp.fc1", None), ("ff.net.2", "x_block.mlp.fc2", None),
    ("ff_context.net.0.proj", "context_block.mlp.fc1", None), ("ff_context.net.2", "context_block.mlp.fc2", None),
)

FAMILY = DiTFamily(
    name="sd3",
    title="Stable Diffusion 3 / 3.5",
    priority=13,
    diffusers_class="SD3Transformer2DModel",
    diffusers_pipeline="StableDiffusion3Pipeline",
    diffusers_config=dict(sample_size=128, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
                          num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                          pooled_projection_dim=2048, pos_embed_max_size=192, qk_norm="rms_norm"),
    rules=(*block_rules("transformer_blocks", "joint_blocks", JOINT),
           Rule("pos_embed.proj", "x_embedder.proj"), Rule("context_embedder", "context_embedder"),
           Rule("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
           Rule("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
           Rule("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
           Rule("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
           Rule("proj_out", "final_layer.linear")),
    original_roots=frozenset({"joint_blocks", "x_embedder", "context_embedder", "t_embedder", "y_embedder", "final_layer"}),
    signatures=(Signature("joint_blocks.N.x_block", 6), Signature("joint_blocks.N.context_block", 6),
                Signature("pos_embed.proj", 6), Signature("transformer_blocks.N.attn.add_q_proj", 3)),
    comfy_model_types=frozenset({"SD3"}),
    metadata_strings={"ss_base_model_version": "sd3", "modelspec.architecture": "stable-diffusion-3/lora",
                      "modelspec.implementation": "https://github.com/Stability-AI/sd3.5",
                      "modelspec.resolution": "1024x1024"},
    ss_prefix="sd3",
    sigma_sampling=SD3_SIGMAS,
)

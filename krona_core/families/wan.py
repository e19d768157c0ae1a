"""Wan 2.1 / 2.2 (Alibaba Wan; text- and image-to-video, one frame = an image): 40 (14B) or 30
(1.3B, 5B) blocks of self-attention, cross-attention to umT5 (plus CLIP image keys in I2V) and an
MLP, unfused q/k/v/o; rectified flow. The real model here is Wan 2.1 T2V 14B."""

from ..naming.dit import Rule
from .dit import DiTFamily, Signature, block_rules

BLOCK = (
    ("attn1.to_q", "self_attn.q", None), ("attn1.to_k", "self_attn.k", None), ("attn1.to_v", "self_attn.v", None),
    ("attn1.to_out.0", "self_attn.o", None),
    ("attn2.to_q", "cross_attn.q", None), ("attn2.to_k", "cross_attn.k", None), ("attn2.to_v", "cross_attn.v", None),
    ("attn2.to_out.0", "cross_attn.o", None), ("attn2.add_k_proj", "cross_attn.k_img", None),
    ("attn2.add_v_proj", "cross_attn.v_img", None),
    ("ffn.net.0.proj", "ffn.0", None), ("ffn.net.2", "ffn.2", None),
)

FAMILY = DiTFamily(
    name="wan",
    title="Wan 2.x",
    priority=17,
    diffusers_class="WanTransformer3DModel",
    diffusers_config={},
    rules=(*block_rules("blocks", "blocks", BLOCK),
           Rule("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
           Rule("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
           Rule("condition_embedder.time_proj", "time_projection.1"),
           Rule("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
           Rule("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
           Rule("proj_out", "head.head")),
    original_roots=frozenset({"blocks", "patch_embedding", "text_embedding", "time_embedding", "time_projection", "head",
                              "img_emb"}),
    signatures=(Signature("blocks.N.self_attn.q", 6), Signature("blocks.N.cross_attn.k", 6),
                Signature("condition_embedder.time_proj", 6), Signature("blocks.N.ffn.net.0.proj", 6),
                Signature("blocks.N.attn2.add_k_proj", 6)),
    comfy_model_types=frozenset({"WAN21_T2V", "WAN21_I2V", "WAN21_FunControl2V", "WAN21_Camera", "WAN22_Camera",
                                 "WAN21_Vace", "WAN21_HuMo", "WAN22_S2V", "WAN22_Animate", "WAN22_T2V"}),
    metadata_strings={"ss_base_model_version": "wan", "modelspec.architecture": "wan2.1/lora",
                      "modelspec.implementation": "https://github.com/Wan-Video/Wan2.1",
                      "modelspec.resolution": "832x480"},
    ss_prefix="wan",
    default_resolution=832,
)

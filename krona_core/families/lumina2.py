"""Lumina-Image 2.0 (Alpha-VLLM): the NextDiT transformer — one stream after a noise and a context
refiner, fused qkv with grouped-query attention (24 query heads, 8 key/value heads: rows 3 : 1 : 1),
SwiGLU feed-forward (w1, w2, w3); Gemma-2 conditioning; rectified flow."""

from ..naming.dit import Rule
from .dit import DiTFamily, Signature, block_rules, qkv_parts

GQA = qkv_parts((3, 1, 1))


def nextdit_rules(attention: str, ff: tuple[str, str, str], qkv, modulation: str | None) -> tuple[Rule, ...]:
    """The block rules NextDiT models share (Lumina 2 with diffusers' `attn` / `linear_*` names,
    Z-Image with `attention` / `w*`), for the main layers and both refiners."""
    table = (
        (f"{attention}.to_q", "attention.qkv", qkv[0]), (f"{attention}.to_k", "attention.qkv", qkv[1]),
        (f"{attention}.to_v", "attention.qkv", qkv[2]), (f"{attention}.to_out.0", "attention.out", None),
        (f"feed_forward.{ff[0]}", "feed_forward.w1", None), (f"feed_forward.{ff[1]}", "feed_forward.w2", None),
        (f"feed_forward.{ff[2]}", "feed_forward.w3", None),
    )
    modulated = table + (((modulation, "adaLN_modulation.1", None),) if modulation else ())
    return (*block_rules("layers", "layers", modulated), *block_rules("noise_refiner", "noise_refiner", modulated),
            *block_rules("context_refiner", "context_refiner", table))


NEXTDIT_ROOTS = frozenset({"layers", "noise_refiner", "context_refiner", "x_embedder", "t_embedder", "cap_embedder",
                           "final_layer"})

FAMILY = DiTFamily(
    name="lumina2",
    title="Lumina 2",
    priority=15,
    diffusers_class="Lumina2Transformer2DModel",
    diffusers_config={},
    rules=(*nextdit_rules("attn", ("linear_1", "linear_2", "linear_3"), GQA, "norm1.linear"),
           Rule("time_caption_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
           Rule("time_caption_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
           Rule("time_caption_embed.caption_embedder.1", "cap_embedder.1"),
           Rule("norm_out.linear_1", "final_layer.adaLN_modulation.1"), Rule("norm_out.linear_2", "final_layer.linear")),
    original_roots=NEXTDIT_ROOTS,
    signatures=(Signature("layers.N.attention.qkv", 6, qkv_ratio=(5, 3)), Signature("time_caption_embed", 6),
                Signature("layers.N.attn.to_q", 5), Signature("layers.N.feed_forward.linear_1", 5)),
    comfy_model_types=frozenset({"Lumina2"}),
    metadata_strings={"ss_base_model_version": "lumina2", "modelspec.architecture": "lumina-2/lora",
                      "modelspec.implementation": "https://github.com/Alpha-VLLM/Lumina-Image-2.0",
                      "modelspec.resolution": "1024x1024"},
    ss_prefix="lumina2",
)

"""A diffusers transformer config read off a FLUX.1 (BFL) or SD3 / SD3.5 (SAI MMDiT) single file's
tensor shapes and keys, so the file loads offline (no hub config): the counterpart of
`sd_checkpoint.py` for the flow transformers.

What the weights do not store is the architecture's fixed rule: FLUX.1's rope axes (16, 56, 56) for
its 128-wide heads (scaled with the head width for other widths), and MMDiT's 64-wide heads where a
file has no qk norm to read the head width off (SD3 Medium).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from .base import FamilyError
from .dit import DiTFamily

Shapes = Mapping[str, Sequence[int]]

FLUX_ROPE = (16, 56, 56)  # FLUX.1's rope axes (time/index, height, width) for its 128-wide heads
MMDIT_HEAD = 64  # SD3 / SD3.5: num_heads = depth and hidden = 64 · depth


def _shape(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise FamilyError(f"no {key} in the file: not a complete {what} diffusion model")
    return tuple(int(d) for d in shapes[key])


def _blocks(shapes: Shapes, root: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(root)}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in shapes if (m := pattern.match(k))})


def _count(shapes: Shapes, root: str, what: str) -> int:
    found = _blocks(shapes, root)
    if found != list(range(len(found))) or not found:
        raise FamilyError(f"{root}: blocks {found[:8]} are not 0 … N-1: not a complete {what} diffusion model")
    return len(found)


def flux_config(shapes: Shapes) -> dict[str, Any]:
    """FluxTransformer2DModel arguments of a BFL-named FLUX.1 file (keys without prefix)."""
    what = "FLUX.1"
    hidden, in_channels = _shape(shapes, "img_in.weight", what)
    head = _shape(shapes, "double_blocks.0.img_attn.norm.query_norm.scale", what)[0]
    if hidden % head:
        raise FamilyError(f"FLUX.1: width {hidden} is not a whole number of {head}-wide heads")
    rope = FLUX_ROPE if head == 128 else (head // 8, head * 7 // 16, head * 7 // 16)
    if sum(rope) != head or any(a % 2 for a in rope):
        raise FamilyError(f"FLUX.1: no rope axes for {head}-wide heads (FLUX.1's are {FLUX_ROPE} for 128; scaled, "
                          "they need a head width divisible by 32)")
    linear1 = _shape(shapes, "single_blocks.0.linear1.weight", what)[0]
    if linear1 != 7 * hidden:
        raise FamilyError(f"FLUX.1: single_blocks.0.linear1 has {linear1} rows, not q, k, v and the 4× MLP input "
                          f"(7 × {hidden}) that diffusers' FluxTransformer2DModel has")
    return dict(patch_size=1, in_channels=in_channels, out_channels=_shape(shapes, "final_layer.linear.weight", what)[0],
                num_layers=_count(shapes, "double_blocks", what), num_single_layers=_count(shapes, "single_blocks", what),
                attention_head_dim=head, num_attention_heads=hidden // head,
                joint_attention_dim=_shape(shapes, "txt_in.weight", what)[1],
                pooled_projection_dim=_shape(shapes, "vector_in.in_layer.weight", what)[1],
                guidance_embeds="guidance_in.in_layer.weight" in shapes, axes_dims_rope=rope)


def sd3_config(shapes: Shapes, sample_size: int) -> dict[str, Any]:
    """SD3Transformer2DModel arguments of an SAI MMDiT file (keys without prefix)."""
    what = "SD3 / SD3.5"
    hidden, in_channels, patch, _ = _shape(shapes, "x_embedder.proj.weight", what)
    qk = shapes.get("joint_blocks.0.x_block.attn.ln_q.weight")
    head = int(qk[0]) if qk is not None else MMDIT_HEAD
    if hidden % head:
        raise FamilyError(f"SD3: width {hidden} is not a whole number of {head}-wide heads")
    positions = _shape(shapes, "pos_embed", what)[1]
    side = round(positions ** 0.5)
    if side * side != positions:
        raise FamilyError(f"SD3: pos_embed has {positions} positions, not a square grid")
    caption, joint = _shape(shapes, "context_embedder.weight", what)
    return dict(sample_size=sample_size, patch_size=patch, in_channels=in_channels,
                out_channels=_shape(shapes, "final_layer.linear.weight", what)[0] // (patch * patch),
                num_layers=_count(shapes, "joint_blocks", what), attention_head_dim=head,
                num_attention_heads=hidden // head, joint_attention_dim=joint, caption_projection_dim=caption,
                pooled_projection_dim=_shape(shapes, "y_embedder.mlp.0.weight", what)[1], pos_embed_max_size=side,
                dual_attention_layers=tuple(i for i in _blocks(shapes, "joint_blocks")
                                            if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in shapes),
                qk_norm="rms_norm" if qk is not None else None)


def transformer_config(family: DiTFamily, shapes: Shapes) -> dict[str, Any]:
    """The diffusers config of `family`'s transformer in a single file (keys without their prefix)."""
    if family.name == "flux1":
        return flux_config(shapes)
    if family.name == "sd3":
        return sd3_config(shapes, family.diffusers_config["sample_size"])
    raise FamilyError(f"{family.title}: single-file transformers of this family are not loaded by the trainer "
                      "(FLUX.1 and SD3 / SD3.5 are); give its diffusers folder")

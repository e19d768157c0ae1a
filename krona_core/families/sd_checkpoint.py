"""A diffusers UNet config read off an SD-family single-file checkpoint's tensor shapes."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..naming.kohya import KeyMapError
from ..naming.unet import UNetLayout
from .sd import SDFamily


def unet_config_from_checkpoint(family: SDFamily, shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel config read off an ldm/SGM checkpoint's tensor shapes.

    Works for the real SD1.x/SD2.x/SDXL UNets and for reduced or fine-tuned layouts of the same
    family. Head counts are not stored in weights: the family says (SD1: 8 heads, SD2/SDXL 64-wide).
    """
    prefix = family.unet_prefix
    names = [k[len(prefix):] for k in shapes if k.startswith(prefix)]
    layout = UNetLayout.from_ldm(names)

    def shape(key: str) -> tuple[int, ...]:
        return tuple(shapes[prefix + key])

    def depth(block: str) -> int:
        start = block + ".transformer_blocks."
        return len({n[len(start):].split(".")[0] for n in names if n.startswith(start)})

    channels, index, depths = [], 1, []
    for level, count in enumerate(layout.resnets):
        channels.append(shape(f"input_blocks.{index}.0.out_layers.3.weight")[0])
        depths.append(depth(f"input_blocks.{index}.1") if layout.down_attention[level] else 1)
        index += count + (1 if layout.downsample[level] else 0)
    up_depths, out_index = [], 0
    for level, count in enumerate(layout.up_resnets):
        up_depths.append([depth(f"output_blocks.{out_index + j}.1") or 1 for j in range(count)])
        out_index += count
    to_k = next((n for n in names if n.endswith("attn2.to_k.weight")), None)
    if to_k is None:
        raise KeyMapError("the UNet has no cross-attention (attn2.to_k): not an SD-family text-to-image UNet")
    proj_in = next(n for n in names if n.endswith("proj_in.weight"))
    mid_depth = depth("middle_block.1") if layout.mid_attention else 1
    if layout.mid_attention and mid_depth != depths[-1]:
        raise KeyMapError(f"middle-block transformer depth {mid_depth} differs from the last level's {depths[-1]}; "
                          "diffusers' UNet2DConditionModel cannot represent this layout")
    config: dict[str, Any] = dict(
        sample_size=family.unet_config["sample_size"],
        in_channels=shape("input_blocks.0.0.weight")[1],
        out_channels=shape("out.2.weight")[0],
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in layout.down_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in layout.up_attention),
        mid_block_type="UNetMidBlock2DCrossAttn" if layout.mid_attention else None,
        block_out_channels=tuple(channels),
        layers_per_block=layout.resnets if len(set(layout.resnets)) > 1 else layout.resnets[0],
        transformer_layers_per_block=tuple(depths),
        reverse_transformer_layers_per_block=tuple(tuple(d) for d in up_depths),
        cross_attention_dim=shape(to_k)[1],
        use_linear_projection=len(shape(proj_in)) == 2,
        attention_head_dim=family.fixed_heads or tuple(max(1, c // 64) for c in channels),
    )
    if "addition_embed_type" in family.unet_config:
        config.update(addition_embed_type=family.unet_config["addition_embed_type"],
                      addition_time_embed_dim=family.unet_config["addition_time_embed_dim"],
                      projection_class_embeddings_input_dim=shape("label_emb.0.0.weight")[1])
    return config

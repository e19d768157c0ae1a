"""Tiny seeded diffusers FLUX.1 and SD3 / SD3.5 transformers written as the original releases' single
files (BFL's `double_blocks.N.img_attn.qkv` …, SAI's MMDiT `joint_blocks.N.x_block…`), by a
diffusers → original map written here by hand from the two repositories' module names (the inverse
of what the loader under test runs, diffusers' own single-file converters)."""

from __future__ import annotations

from pathlib import Path

import torch

#: variant → (diffusers class, config): FLUX.1 [dev] (guidance input) and [schnell] (none); SD3.5
#: Medium (qk RMSNorm, a second image attention in block 0), SD3.5 Large (qk RMSNorm), SD3 Medium
#: (no qk norm: the MMDiT's 64-wide heads)
VARIANTS = {
    "flux1-dev": ("FluxTransformer2DModel", dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2,
                                                 attention_head_dim=32, num_attention_heads=2, joint_attention_dim=24,
                                                 pooled_projection_dim=12, guidance_embeds=True, axes_dims_rope=(4, 14, 14))),
    "flux1-schnell": ("FluxTransformer2DModel", dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=1,
                                                     attention_head_dim=32, num_attention_heads=2, joint_attention_dim=24,
                                                     pooled_projection_dim=12, guidance_embeds=False,
                                                     axes_dims_rope=(4, 14, 14))),
    "sd3.5-medium": ("SD3Transformer2DModel", dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16,
                                                   num_layers=2, attention_head_dim=16, num_attention_heads=2,
                                                   joint_attention_dim=24, caption_projection_dim=32,
                                                   pooled_projection_dim=12, pos_embed_max_size=16,
                                                   dual_attention_layers=(0,), qk_norm="rms_norm")),
    "sd3.5-large": ("SD3Transformer2DModel", dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16,
                                                  num_layers=2, attention_head_dim=16, num_attention_heads=2,
                                                  joint_attention_dim=24, caption_projection_dim=32,
                                                  pooled_projection_dim=12, pos_embed_max_size=16, qk_norm="rms_norm")),
    "sd3-medium": ("SD3Transformer2DModel", dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16,
                                                 num_layers=2, attention_head_dim=64, num_attention_heads=1,
                                                 joint_attention_dim=24, caption_projection_dim=64,
                                                 pooled_projection_dim=12, pos_embed_max_size=16)),
}

FLUX_TOP = {"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
            "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
            "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
            "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
            "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
            "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
            "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear"}
FLUX_DOUBLE = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
               "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
               "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
               "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
               "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
               "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}
FLUX_SINGLE = {"norm.linear": "modulation.lin", "attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm",
               "proj_out": "linear2"}
#: fused original weights: original member ← the diffusers members stacked by rows, in order
FLUX_FUSED = {"double": {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                         "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")},
              "single": {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}}

SD3_TOP = {"pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder",
           "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
           "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
           "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
           "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "proj_out": "final_layer.linear"}
SD3_JOINT = {"norm1.linear": "x_block.adaLN_modulation.1", "norm1_context.linear": "context_block.adaLN_modulation.1",
             "attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
             "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
             "attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
             "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k",
             "attn2.to_out.0": "x_block.attn2.proj",
             "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
             "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2"}
SD3_FUSED = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
             "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
             "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}


def transformer(variant: str, seed: int = 0) -> torch.nn.Module:
    """The tiny diffusers transformer, every weight seeded (norm scales and biases too, so a swapped
    or dropped tensor changes the output)."""
    import diffusers

    name, config = VARIANTS[variant]
    model = getattr(diffusers, name)(**config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("pos_embed.pos_embed"):
                continue
            scale = value[0].numel() ** -0.5 if value.dim() >= 2 else 0.1
            value.copy_((1.0 if "norm" in key and value.dim() == 1 else 0.0) + scale * torch.randn(value.shape, generator=g))
    return model.eval()


def _swap(weight: torch.Tensor) -> torch.Tensor:
    """diffusers' final adaLN stores (scale, shift); the originals (shift, scale)."""
    scale, shift = weight.chunk(2, dim=0)
    return torch.cat([shift, scale], dim=0)


def _rename(sd: dict, out: dict, table: dict, src: str, dst: str) -> None:
    for diffusers_name, original in table.items():
        for kind in ("weight", "bias"):
            key = f"{src}{diffusers_name}.{kind}"
            if key in sd:
                out[f"{dst}{original}.{kind if not original.endswith('_norm') else 'scale'}"] = sd.pop(key)


def _fuse(sd: dict, out: dict, table: dict, src: str, dst: str) -> None:
    for original, parts in table.items():
        for kind in ("weight", "bias"):
            keys = [f"{src}{p}.{kind}" for p in parts]
            if all(k in sd for k in keys):
                out[f"{dst}{original}.{kind}"] = torch.cat([sd.pop(k) for k in keys])


def to_original(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of a tiny diffusers Flux / SD3 transformer in BFL / SAI naming; raises when a
    tensor is left unmapped (the map would be incomplete)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    flux = type(model).__name__.startswith("Flux")
    if flux:
        for i in range(model.config.num_layers):
            _fuse(sd, out, FLUX_FUSED["double"], f"transformer_blocks.{i}.", f"double_blocks.{i}.")
            _rename(sd, out, FLUX_DOUBLE, f"transformer_blocks.{i}.", f"double_blocks.{i}.")
        for i in range(model.config.num_single_layers):
            _fuse(sd, out, FLUX_FUSED["single"], f"single_transformer_blocks.{i}.", f"single_blocks.{i}.")
            _rename(sd, out, FLUX_SINGLE, f"single_transformer_blocks.{i}.", f"single_blocks.{i}.")
        _rename(sd, out, FLUX_TOP, "", "")
    else:
        last = model.config.num_layers - 1
        for i in range(model.config.num_layers):
            _fuse(sd, out, SD3_FUSED, f"transformer_blocks.{i}.", f"joint_blocks.{i}.")
            _rename(sd, out, SD3_JOINT, f"transformer_blocks.{i}.", f"joint_blocks.{i}.")
            for kind in ("weight", "bias"):  # the text stream's last adaLN is diffusers' continuous (scale, shift)
                key = f"joint_blocks.{last}.context_block.adaLN_modulation.1.{kind}"
                if i == last:
                    out[key] = _swap(out[key])
        _rename(sd, out, SD3_TOP, "", "")
        out["pos_embed"] = sd.pop("pos_embed.pos_embed")
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap(sd.pop(f"norm_out.linear.{kind}"))
    if sd:
        raise AssertionError(f"unmapped diffusers tensors: {sorted(sd)}")
    return out


def write_single_file(model: torch.nn.Module, path: Path, prefix: str = "") -> Path:
    from safetensors.torch import save_file

    save_file({prefix + k: v.contiguous() for k, v in to_original(model).items()}, str(path))
    return path

"""The attention processor of a fused SD3 / SD3.5 transformer.

diffusers' `fuse_qkv_projections` gives every SD3 attention `FusedJointAttnProcessor2_0`, which
skips the qk norms (`norm_q`, `norm_k`, `norm_added_q`, `norm_added_k`: SD3.5's RMSNorm) and needs
a text stream (SD3.5 Medium's second image attention `attn2` has none). This one is
`JointAttnProcessor2_0` (the unfused processor SD3 runs with) on the fused `to_qkv` / `to_added_qkv`
weights: the same attention as the unfused model, norms and attn2 included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class FusedJointQKNormProcessor:
    """Joint (image + text) or image-only attention over fused qkv projections, with the qk norms."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs):
        batch, tokens = hidden_states.shape[0], hidden_states.shape[1]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = (heads(x) for x in attn.to_qkv(hidden_states).chunk(3, dim=-1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            c_query, c_key, c_value = (heads(x) for x in attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1))
            if attn.norm_added_q is not None:
                c_query = attn.norm_added_q(c_query)
            if attn.norm_added_k is not None:
                c_key = attn.norm_added_k(c_key)
            query, key, value = (torch.cat([a, b], dim=2) for a, b in ((query, c_query), (key, c_key), (value, c_value)))
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[3]).to(query.dtype)
        context = None
        if encoder_hidden_states is not None:
            out, context = out[:, :tokens], out[:, tokens:]
            if not attn.context_pre_only:
                context = attn.to_add_out(context)
        out = attn.to_out[1](attn.to_out[0](out))
        return out if encoder_hidden_states is None else (out, context)


def use_fused_joint_processor(transformer: torch.nn.Module) -> None:
    """Replace diffusers' FusedJointAttnProcessor2_0 (set by fuse_qkv_projections) on every attention."""
    from diffusers.models.attention_processor import FusedJointAttnProcessor2_0

    for module in transformer.modules():
        if isinstance(getattr(module, "processor", None), FusedJointAttnProcessor2_0):
            module.set_processor(FusedJointQKNormProcessor())

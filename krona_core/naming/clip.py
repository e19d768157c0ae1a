"""Text-encoder naming: Hugging Face CLIP parameters ↔ OpenCLIP ones (SD2's encoder and SDXL's
second encoder are stored in OpenCLIP form in single-file checkpoints, q/k/v fused by rows)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .kohya import KeyMapError

_HF_TO_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPEN_CLIP_TO_HF_LAYER = {v: k for k, v in _HF_TO_OPEN_CLIP_LAYER.items()}
_HF_TO_OPEN_CLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",  # stored transposed in OpenCLIP
}
_QKV_INDEX = {"q_proj": 0, "k_proj": 1, "v_proj": 2}


@dataclass(frozen=True)
class WeightSlot:
    """Where a Hugging Face CLIP parameter lives in an OpenCLIP state dict.

    rows: (index, of) — the parameter is row block `index` of `of` equal blocks (q, k, v of the
    fused in_proj); transposed: stored as the transpose (text_projection).
    """

    key: str
    rows: tuple[int, int] | None = None
    transposed: bool = False


def hf_clip_to_open_clip(hf_key: str) -> WeightSlot:
    """OpenCLIP location of a Hugging Face CLIP text-model parameter key (SD2 / SDXL te2)."""
    if hf_key in _HF_TO_OPEN_CLIP_TOP:
        return WeightSlot(_HF_TO_OPEN_CLIP_TOP[hf_key], transposed=hf_key == "text_projection.weight")
    m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_key)
    if not m:
        raise KeyMapError(f"{hf_key!r} is not a Hugging Face CLIP text-model parameter")
    layer, member, kind = m.groups()
    base = f"transformer.resblocks.{layer}."
    attn = re.fullmatch(r"self_attn\.(q_proj|k_proj|v_proj)", member)
    if attn:
        return WeightSlot(f"{base}attn.in_proj_{kind}", rows=(_QKV_INDEX[attn.group(1)], 3))
    if member not in _HF_TO_OPEN_CLIP_LAYER:
        raise KeyMapError(f"{hf_key!r}: no OpenCLIP counterpart for {member!r}")
    return WeightSlot(f"{base}{_HF_TO_OPEN_CLIP_LAYER[member]}.{kind}")


def open_clip_to_hf(open_clip_key: str) -> list[str]:
    """Hugging Face CLIP key(s) of an OpenCLIP parameter (a fused in_proj gives q, k and v)."""
    for hf, oc in _HF_TO_OPEN_CLIP_TOP.items():
        if oc == open_clip_key:
            return [hf]
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", open_clip_key)
    m_fused = re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", open_clip_key)
    if m_fused:
        layer, kind = m_fused.groups()
        return [f"text_model.encoder.layers.{layer}.self_attn.{p}.{kind}" for p in ("q_proj", "k_proj", "v_proj")]
    if not m or m.group(2) not in _OPEN_CLIP_TO_HF_LAYER:
        raise KeyMapError(f"{open_clip_key!r} is not an OpenCLIP text-transformer parameter with a Hugging Face counterpart")
    layer, member, kind = m.groups()
    return [f"text_model.encoder.layers.{layer}.{_OPEN_CLIP_TO_HF_LAYER[member]}.{kind}"]

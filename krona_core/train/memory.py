"""A frozen base stored in float8 (`--base-dtype fp8`): the diffusion model's weights kept as
float8_e4m3fn (1 byte each, half of bf16) and cast to bf16 layer by layer as each runs — diffusers'
own layerwise casting (`ModelMixin.enable_layerwise_casting`, the storage scheme of ComfyUI's fp8
weight dtypes and kohya's `--fp8_base`). What the model class lists to skip stays in bf16 (FLUX: the
positional embedding and every `norm` module, its adaLN modulations included).
The adapters are unaffected: they train in float32 on their own parameters and add their delta to
a layer's output through forward hooks, after the layer has run on its cast weight.
"""

from __future__ import annotations

import torch

from .diffusers_backend import BaseLoadError

STORAGE = torch.float8_e4m3fn


def store_float8(model: torch.nn.Module, compute_dtype: torch.dtype = torch.bfloat16) -> None:
    """Store `model`'s layer weights in float8_e4m3fn, computed in `compute_dtype`. Call after the
    model's layout is final (fused projections): layers made later are not cast."""
    enable = getattr(model, "enable_layerwise_casting", None)
    if enable is None:
        raise BaseLoadError(f"{type(model).__name__}: a float8 base needs diffusers' enable_layerwise_casting "
                            "(diffusers ≥ 0.33); use --base-dtype bf16")
    enable(storage_dtype=STORAGE, compute_dtype=compute_dtype)

"""The one Kronecker bypass forward: output + strength · (x through kron(w1, w2)).

Both the trainable adapters (`adapters/layers.py`) and ComfyUI's bypass mode
(`nodes/comfy_patch.py`) run it, so they cannot disagree. It covers
- linear and conv layers (a conv's kernel lives in w2; a 2-D w2 on a 1×1 conv is read as 1×1);
- conv padding modes other than zeros (reflect, replicate, circular): the input is padded first,
  exactly as `nn.Conv2d` does, then convolved without padding;
- a slice of fused output rows (`RowSlice` as `rows`): one factor pair adapting q, k or v of a
  fused in_proj / qkv weight adds its delta to those output features only;
- the converse, a window of ΔW's rows (`RowSlice` as `window`): a layer that computes only rows
  of a fused weight (diffusers' `to_qkv` and `proj_mlp` of Flux's `linear1`) gets those rows of
  one factor pair over the whole fused weight (`matmul.kron_linear_rows`);
- the strength on the small factor w1 (computed in float32, cast once), which spares a pass over
  every output element;
- a materialised path (ΔW formed explicitly) for benchmarks and as an independent check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .matmul import kron_conv2d, kron_linear, kron_linear_rows, materialise
from .shapes import Order


@dataclass(frozen=True)
class ConvSpec:
    """What a conv layer's forward needs besides its weight."""

    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] | str = (0, 0)
    dilation: tuple[int, ...] = (1, 1)
    padding_mode: str = "zeros"
    reversed_padding: tuple[int, ...] = ()  # F.pad order, used when padding_mode is not zeros

    @classmethod
    def of(cls, module: nn.Conv2d) -> "ConvSpec":
        return cls(tuple(module.stride), module.padding if isinstance(module.padding, str) else tuple(module.padding),
                   tuple(module.dilation), module.padding_mode,
                   tuple(getattr(module, "_reversed_padding_repeated_twice", ())))


@dataclass(frozen=True)
class RowSlice:
    """Output features start … start + size − 1 of a fused weight (dim 0 of the weight)."""

    start: int
    size: int


def scaled_w1(w1: torch.Tensor, strength: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """strength · w1 computed in at least float32 and cast once to the activation dtype."""
    w1 = w1.to(device=device)
    if strength != 1.0:
        w1 = w1.to(torch.promote_types(w1.dtype, torch.float32)) * strength
    return w1.to(dtype)


def kron_delta(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, conv: ConvSpec | None = None, strength: float = 1.0,
               order: Order | None = None, materialised: bool = False, window: RowSlice | None = None) -> torch.Tensor:
    """strength · (x through kron(w1, w2)) in x's dtype, on x's device; a conv when `conv` is given;
    with `window` (linear only), through those rows of kron(w1, w2) only."""
    w1 = scaled_w1(w1, strength, x.dtype, x.device)
    w2 = w2.to(device=x.device, dtype=x.dtype)
    if window is not None:
        if conv is not None:
            raise ValueError("a row window of the Kronecker product is for linear layers only")
        if materialised:
            return F.linear(x, materialise(w1, w2)[window.start:window.start + window.size])
        return kron_linear_rows(x, w1, w2, window.start, window.size)
    if conv is None:
        return F.linear(x, materialise(w1, w2)) if materialised else kron_linear(x, w1, w2, order)
    if w2.dim() == 2:
        w2 = w2[:, :, None, None]
    padding = conv.padding
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv.reversed_padding, mode=conv.padding_mode)
        padding = 0
    if materialised:
        return F.conv2d(x, materialise(w1, w2), None, conv.stride, padding, conv.dilation)
    return kron_conv2d(x, w1, w2, conv.stride, padding, conv.dilation, order)


def add_kron_delta(output: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, conv: ConvSpec | None = None,
                   strength: float = 1.0, rows: RowSlice | None = None, order: Order | None = None,
                   materialised: bool = False, window: RowSlice | None = None) -> torch.Tensor:
    """output + strength · ΔW·x; with `rows`, only those output features get the delta; with
    `window`, the output is that window of ΔW's rows (see `kron_delta`)."""
    delta = kron_delta(x, w1, w2, conv, strength, order, materialised, window).to(output.dtype)
    if rows is None:
        return output + delta
    dim = 1 if conv is not None else output.dim() - 1
    if delta.shape[dim] != rows.size:
        raise ValueError(f"the factors give {delta.shape[dim]} output features, the row slice has {rows.size}")
    out = output.clone()
    out.narrow(dim, rows.start, rows.size).add_(delta)
    return out

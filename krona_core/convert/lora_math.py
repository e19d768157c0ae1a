"""LoRA ↔ Kronecker math: exact and truncated LoRAs of Kronecker products, dense ΔWs and official
DiffuseKronA modules, and the kohya tensors a LoRA is written as."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def kron_to_lora(w1: torch.Tensor, w2: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up, down, rel_error) with kron(w1, w2) ≈ up @ down (2-D; conv kernels flattened into down).

    The SVD of a Kronecker product is the Kronecker product of the factors' SVDs, so the exact
    LoRA has rank rank(w1)·rank(w2) and the best rank-R truncation keeps the R largest products
    σ1_i · σ2_j — computed from the two small SVDs, never from the big ΔW.
    """
    a = w1.double()
    b = w2.double().reshape(w2.shape[0], -1)
    u1, s1, v1 = torch.linalg.svd(a, full_matrices=False)
    u2, s2, v2 = torch.linalg.svd(b, full_matrices=False)
    products = torch.outer(s1, s2).flatten()
    tol = products.max() * max(a.shape + b.shape) * torch.finfo(torch.float64).eps * 8 if products.numel() else 0
    order = torch.argsort(products, descending=True)
    keep = order[products[order] > tol]
    if rank is not None:
        keep = keep[:rank]
    i, j = keep // s2.numel(), keep % s2.numel()
    sigma = products[keep]
    # columns of kron(U1, U2) and kron(V1, V2) for the kept (i, j) pairs
    left = torch.einsum("ak,bk->abk", u1[:, i], u2[:, j]).reshape(a.shape[0] * b.shape[0], -1)
    right = torch.einsum("ak,bk->abk", v1[i].T, v2[j].T).reshape(a.shape[1] * b.shape[1], -1)
    root = sigma.sqrt()
    up = left * root
    down = (right * root).T
    total = float((products ** 2).sum())
    dropped = torch.ones(products.numel(), dtype=torch.bool)
    dropped[keep] = False
    rel = math.sqrt(float((products[dropped] ** 2).sum()) / total) if total > 0 else 0.0
    return up.float(), down.float(), rel


def dense_to_lora(delta: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Truncated SVD of a dense ΔW (exact at its numerical rank)."""
    mat = delta.double().reshape(delta.shape[0], -1)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    tol = s.max() * max(mat.shape) * torch.finfo(torch.float64).eps * 8 if s.numel() else 0
    r = int((s > tol).sum())
    if rank is not None:
        r = min(r, rank)
    root = s[:r].sqrt()
    total = float((s ** 2).sum())
    rel = math.sqrt(float((s[r:] ** 2).sum()) / total) if total > 0 else 0.0
    return (u[:, :r] * root).float(), (root[:, None] * vh[:r]).float(), rel


def official_delta(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """ΔW of an official DiffuseKronA module: ΔW[p·a1 + q, i·b2 + j] = down[i, q] · up[p, j].

    down (a2, a1), up (b1, b2); this is kron(downᵀ, up) with its rows shuffled (q·b1 + p → p·a1 + q),
    not a plain Kronecker product.
    """
    a2, a1 = down.shape
    b1, b2 = up.shape
    return torch.einsum("iq,pj->pqij", down.double(), up.double()).reshape(b1 * a1, a2 * b2)


def official_to_lora(down: torch.Tensor, up: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Exact (or truncated) LoRA of an official module: the row shuffle moves onto `up`."""
    a2, a1 = down.shape
    b1, b2 = up.shape
    lora_up, lora_down, rel = kron_to_lora(down.T.contiguous(), up, rank)  # rows of kron(downᵀ, up): q·b1 + p
    shuffled = lora_up.reshape(a1, b1, -1).transpose(0, 1).reshape(a1 * b1, -1)  # → rows p·a1 + q
    return shuffled, lora_down, rel


def lora_tensors(name: str, up: torch.Tensor, down: torch.Tensor, weight_shape: Sequence[int], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """kohya tensors for ΔW = up · down · alpha / rank with alpha = rank (scale 1)."""
    rank = up.shape[1]
    out_features, in_features, *kernel = weight_shape
    return {
        f"{name}.lora_up.weight": up.reshape(out_features, rank, *([1] * len(kernel))).to(dtype).contiguous(),
        f"{name}.lora_down.weight": down.reshape(rank, in_features, *kernel).to(dtype).contiguous(),
        f"{name}.alpha": torch.tensor(float(rank), dtype=dtype),
    }

"""Nearest Kronecker product (Van Loan–Pitsianis): how a LoRA or a dense ΔW becomes KronA."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .matmul import materialise

@dataclass
class KronApprox:
    """Best sum of `rank` Kronecker products: ΔW ≈ Σ_r kron(w1[r], w2[r])."""

    w1: torch.Tensor  # (rank, a1, a2)
    w2: torch.Tensor  # (rank, b1, b2[, k, k])
    rel_error: float  # ‖W − Σ‖_F / ‖W‖_F (0 for W = 0)
    singular_values: torch.Tensor

    def materialise(self) -> torch.Tensor:
        return sum(materialise(self.w1[r], self.w2[r]) for r in range(self.w1.shape[0]))


def kron_rearrange(weight: torch.Tensor, a1: int, a2: int) -> torch.Tensor:
    """Van Loan–Pitsianis rearrangement R[i·a2 + j, :] = W[i·b1:(i+1)·b1, j·b2:(j+1)·b2].ravel()."""
    out_features, in_features, *kernel = weight.shape
    if out_features % a1 or in_features % a2:
        raise ValueError(f"({a1}, {a2}) does not divide a weight of shape {tuple(weight.shape)}")
    b1, b2 = out_features // a1, in_features // a2
    blocks = weight.reshape(a1, b1, a2, b2, *kernel).transpose(1, 2)
    return blocks.reshape(a1 * a2, b1 * b2 * math.prod(kernel))


def nearest_kronecker(weight: torch.Tensor, a1: int, a2: int, rank: int = 1) -> KronApprox:
    """Best Frobenius-norm approximation of `weight` by a sum of `rank` Kronecker products.

    Top-`rank` SVD of the rearranged matrix (Van Loan & Pitsianis 1993). Each singular value
    is split evenly (√σ) between the two factors, so both are stored at similar magnitudes.
    The error is exact from the discarded singular values.
    """
    out_features, in_features, *kernel = weight.shape
    b1, b2 = out_features // a1, in_features // a2
    compute_dtype = torch.float64 if weight.device.type == "cpu" else torch.float32
    r = kron_rearrange(weight.detach().to(compute_dtype), a1, a2)
    u, s, vh = torch.linalg.svd(r, full_matrices=False)
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    w1 = (u[:, :rank] * root).t().reshape(rank, a1, a2)
    w2 = (vh[:rank] * root[:, None]).reshape(rank, b1, b2, *kernel)
    total = float((s * s).sum())
    rest = float((s[rank:] * s[rank:]).sum())
    rel_error = math.sqrt(rest / total) if total > 0 else 0.0
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    return KronApprox(w1.to(dtype), w2.to(dtype), rel_error, s.to(torch.float32))

"""The kinds of adapted module a source file can hold, one type each, behind one interface.

- `Kronecker`: ΔW = kron(w1, w2) — .krona files and every LyCORIS LoKr variant (scale baked in);
- `LowRank`: ΔW = up · down — kohya, ComfyUI-trainer and diffusers/PEFT LoRAs (scale baked in);
- `Dense`: a materialised ΔW — LyCORIS "full" (`.diff`) files;
- `Official`: an official DiffuseKronA module, ΔW[p·a1 + q, i·b2 + j] = down[i, q] · up[p, j] — a
  Kronecker product with shuffled output rows, exact as a LoRA but not as a plain KronA;
- LoKr's extras (`lokr.py`): a row window of a fused-qkv product, and DoRA-LoKr, whose change
  depends on the base weight (`needs_base`, `delta_on`).

A converter asks each module for its dense ΔW, its exact Kronecker factors (if it has them), its
squared norm (for error totals) and its best LoRA at a rank; it never branches on the kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..ops.matmul import materialise
from ..ops.shapes import KronShape
from .lora_math import dense_to_lora, kron_to_lora, official_delta, official_to_lora


class SourceModule(ABC):
    """One adapted module of a source file, named the kohya way."""

    name: str
    needs_base = False  # True: ΔW depends on the base weight (DoRA); see `delta_on`

    @property
    @abstractmethod
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the weight it adapts: (out, in[, k, k])."""

    @abstractmethod
    def dense(self) -> torch.Tensor:
        """ΔW materialised, float64."""

    def kronecker(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(w1, w2) when ΔW is exactly kron(w1, w2), else None."""
        return None

    def delta_on(self, weight: torch.Tensor) -> torch.Tensor:
        """What a host adds to `weight` at strength 1, float64 in the weight's shape."""
        return self.dense().reshape(weight.shape)

    def squared_norm(self) -> float:
        return float((self.dense() ** 2).sum())

    def to_lora(self, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(up, down, relative error) of the best LoRA at `rank` (exact rank when None)."""
        return dense_to_lora(self.dense(), rank)


@dataclass
class Kronecker(SourceModule):
    name: str
    w1: torch.Tensor
    w2: torch.Tensor

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return KronShape.from_factors(self.w1.shape, self.w2.shape).weight_shape

    def dense(self) -> torch.Tensor:
        return materialise(self.w1.double(), self.w2.double())  # not in the file's float16

    def kronecker(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w1, self.w2

    def squared_norm(self) -> float:  # ‖A ⊗ B‖² = ‖A‖² · ‖B‖², without materialising
        return float(self.w1.double().norm() ** 2 * self.w2.double().norm() ** 2)

    def to_lora(self, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        return kron_to_lora(self.w1, self.w2, rank)


@dataclass
class LowRank(SourceModule):
    name: str
    up: torch.Tensor  # (out, r), scale baked in
    down: torch.Tensor  # (r, in·k·k)
    shape: tuple[int, ...]

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return self.shape

    def dense(self) -> torch.Tensor:
        return (self.up.double() @ self.down.double()).reshape(self.shape)


@dataclass
class Dense(SourceModule):
    name: str
    delta: torch.Tensor

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(self.delta.shape)

    def dense(self) -> torch.Tensor:
        return self.delta.double()


@dataclass
class Official(SourceModule):
    name: str
    down: torch.Tensor  # (a2, a1)
    up: torch.Tensor  # (b1, b2)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        (a2, a1), (b1, b2) = self.down.shape, self.up.shape
        return (a1 * b1, a2 * b2)

    def dense(self) -> torch.Tensor:
        return official_delta(self.down, self.up)

    def squared_norm(self) -> float:  # a row permutation of kron(downᵀ, up)
        return float(self.down.double().norm() ** 2 * self.up.double().norm() ** 2)

    def to_lora(self, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        return official_to_lora(self.down, self.up, rank)

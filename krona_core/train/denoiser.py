"""What the trainer needs from a model family's backend: the `Denoiser` interface.

Backends implement it over diffusers pipelines (`diffusers_backend.py`), ComfyUI's MODEL / CLIP /
VAE (the pack's nodes) or a test's tiny models; the loop owns everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from ..families.flow import SigmaSampling

Cond = dict[str, torch.Tensor]  # batch-first tensors (encoder states, pooled embeds, size ids …)


@dataclass(frozen=True)
class SizeInfo:
    """SDXL micro-conditioning of one example (pixels): original size, crop top-left, target size."""

    original: tuple[int, int]
    crop: tuple[int, int]
    target: tuple[int, int]


class Denoiser(Protocol):
    """What the loop needs from a model family."""

    prediction_type: str  # "epsilon" or "v_prediction" (VP schedule), or "flow" (rectified flow)
    alphas_cumprod: torch.Tensor | None  # (T,) on the CPU; None for flow
    sigma_sampling: "SigmaSampling | None"  # flow: the base family's σ distribution (None for VP)
    device: torch.device

    def networks(self) -> dict[str, torch.nn.Module]:
        """Trainable candidates by network name: {"unet": …, "te": …} (te1/te2 for SDXL)."""

    def encode_prompts(self, prompts: Sequence[str], sizes: Sequence["SizeInfo"]) -> Cond:
        """Conditioning for a batch; differentiable when text encoders are being trained."""

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The model's native prediction: ε or v for VP-noised latents at integer timesteps t, or
        the velocity ε − x0 for x_t = (1 − σ)·x0 + σ·ε when `t` holds σ ∈ (0, 1) (flow)."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] → scaled latents."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → (N, 3, H, W) in [-1, 1]."""

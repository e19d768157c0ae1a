"""How a flow-matching family draws its training noise levels σ ∈ (0, 1) (`SigmaSampling`).

Rectified flow (Flux, SD3 / SD3.5, and the other flow transformers) noises a latent as
x_σ = (1 − σ)·x0 + σ·ε and predicts the velocity v = ε − x0. Trainers draw σ as their family's
reference trainers do:

- **logit-normal** u = sigmoid(m + s·n), n ~ N(0, 1) (SD3's paper; diffusers'
  `compute_density_for_timestep_sampling(weighting_scheme="logit_normal")`, kohya's `sigmoid`), or
  **uniform** u ~ U(0, 1);
- then a **shift** σ = s·u / (1 + (s − 1)·u) (diffusers' `FlowMatchEulerDiscreteScheduler(shift=s)`,
  kohya's `shift` with `discrete_flow_shift`; SD3 / SD3.5 use s = 3), or
- a **resolution-dependent shift** for Flux: μ grows linearly with the image's token count from
  `base_shift` at `base_tokens` to `max_shift` at `max_tokens` (diffusers' `calculate_shift` in
  FluxPipeline, kohya's `flux_shift`, ComfyUI's ModelSamplingFlux), and σ = e^μ / (e^μ + 1/u − 1),
  which is the shift above with s = e^μ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch

DISTRIBUTIONS = ("logit_normal", "uniform")


@dataclass(frozen=True)
class ResolutionShift:
    """Flux's μ(tokens): linear from (base_tokens, base_shift) to (max_tokens, max_shift)."""

    base_shift: float = 0.5
    max_shift: float = 1.15
    base_tokens: int = 256
    max_tokens: int = 4096
    patch: int = 2  # latent pixels per token side (Flux packs 2×2 latent patches)

    def mu(self, latent_hw: Sequence[int]) -> float:
        h, w = latent_hw
        tokens = (h // self.patch) * (w // self.patch)
        slope = (self.max_shift - self.base_shift) / (self.max_tokens - self.base_tokens)
        return self.base_shift + slope * (tokens - self.base_tokens)


@dataclass(frozen=True)
class SigmaSampling:
    """A family's σ distribution for flow-matching training (defaults: SD3's logit-normal, no shift)."""

    distribution: str = "logit_normal"  # logit_normal | uniform
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # fixed shift s (1 = none); ignored when resolution_shift is set
    resolution_shift: ResolutionShift | None = None

    def validate(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"σ sampling must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}")
        if not (self.shift > 0 and math.isfinite(self.shift)):
            raise ValueError(f"flow shift must be a positive number, got {self.shift}")
        if not (self.logit_std > 0 and math.isfinite(self.logit_std) and math.isfinite(self.logit_mean)):
            raise ValueError(f"logit-normal needs a finite mean and a positive std, got {self.logit_mean}, {self.logit_std}")

    def shift_for(self, latent_hw: Sequence[int]) -> float:
        """The shift s applied at this latent size (e^μ under a resolution-dependent shift)."""
        if self.resolution_shift is not None:
            return math.exp(self.resolution_shift.mu(latent_hw))
        return self.shift

    def draw(self, n: int, generator: torch.Generator, latent_hw: Sequence[int]) -> torch.Tensor:
        """n noise levels σ (float32, CPU) for latents of spatial size latent_hw, from `generator`."""
        if self.distribution == "uniform":
            u = torch.rand((n,), generator=generator)
        else:
            u = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn((n,), generator=generator))
        return shift_sigmas(u, self.shift_for(latent_hw))

    def schedule(self, steps: int, latent_hw: Sequence[int]) -> torch.Tensor:
        """steps + 1 decreasing σ from 1 to 0 for sampling (the shifted linear schedule of the
        families' Euler samplers), float64."""
        return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), self.shift_for(latent_hw))

    def overridden(self, distribution: str | None = None, shift: float | None = None,
                   logit_mean: float | None = None, logit_std: float | None = None) -> "SigmaSampling":
        """This sampling with the settings given replaced; a fixed `shift` drops the resolution rule."""
        out = self
        if distribution is not None:
            out = replace(out, distribution=distribution)
        if shift is not None:
            out = replace(out, shift=float(shift), resolution_shift=None)
        if logit_mean is not None:
            out = replace(out, logit_mean=float(logit_mean))
        if logit_std is not None:
            out = replace(out, logit_std=float(logit_std))
        return out


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = s·σ / (1 + (s − 1)·σ): more of the draws (or sampling steps) at high noise for s > 1."""
    if shift == 1.0:
        return sigmas
    return shift * sigmas / (1 + (shift - 1) * sigmas)


#: SD3 / SD3.5 (diffusers' train_dreambooth_lora_sd3: logit-normal(0, 1), the scheduler's shift 3.0)
SD3_SIGMAS = SigmaSampling(shift=3.0)
#: Flux.1 (kohya's flux_shift, FluxPipeline's calculate_shift: logit-normal(0, 1), μ from 0.5 to 1.15)
FLUX_SIGMAS = SigmaSampling(resolution_shift=ResolutionShift())

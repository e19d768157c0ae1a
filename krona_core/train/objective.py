"""The training objective and its optimisation: the denoising loss in the model's own
parameterisation (ε or v), min-SNR-γ, noise offset; AdamW (8-bit with bitsandbytes); warm-up +
constant / cosine / linear schedules."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .denoiser import Cond, Denoiser


def make_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes); use adamw") from None
        return bnb.optim.AdamW8bit(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def diffusion_loss(
    denoiser: Denoiser,
    latents: torch.Tensor,
    cond: Cond,
    generator: torch.Generator,
    config: TrainConfig,
) -> torch.Tensor:
    """Per-batch denoising loss in the model's own parameterisation (ε or v), min-SNR weighted."""
    device = denoiser.device
    noise = torch.randn(latents.shape, generator=generator)
    if config.noise_offset:
        noise = noise + config.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
    ab = denoiser.alphas_cumprod
    t = torch.randint(0, ab.numel(), (latents.shape[0],), generator=generator)
    a = ab[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - ab[t]).sqrt().view(-1, 1, 1, 1)
    x0, noise = latents.to(device), noise.to(device)
    x_t = a.to(device) * x0 + s.to(device) * noise
    if denoiser.prediction_type == "v_prediction":
        target = a.to(device) * noise - s.to(device) * x0
    else:
        target = noise
    pred = denoiser.predict(x_t, t.to(device), cond)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.dim())))
    if config.min_snr_gamma:
        snr = (ab[t] / (1 - ab[t])).to(device)
        clipped = snr.clamp(max=config.min_snr_gamma)
        weight = clipped / (snr + 1) if denoiser.prediction_type == "v_prediction" else clipped / snr
        per_sample = per_sample * weight
    return per_sample.mean()


def stack_cond(conds: Sequence[Cond]) -> Cond:
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}

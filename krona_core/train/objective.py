"""The training objective and its optimisation: the denoising loss in the model's own
parameterisation (ε or v on the VP schedule, or the rectified-flow velocity), min-SNR-γ, noise offset; AdamW (8-bit with bitsandbytes); warm-up +
constant / cosine / linear schedules."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..families.flow import SigmaSampling
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


PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")


def flow_sampling(denoiser: Denoiser, config: TrainConfig) -> SigmaSampling:
    """The σ distribution a flow-matching run draws from: the base's, with the config's overrides."""
    base = getattr(denoiser, "sigma_sampling", None) or SigmaSampling()
    sampling = base.overridden(None if config.timestep_sampling == "auto" else config.timestep_sampling,
                               config.flow_shift, config.logit_mean, config.logit_std)
    sampling.validate()
    return sampling


def noise_coefficients(prediction_type: str, level: torch.Tensor, alphas_cumprod: torch.Tensor | None,
                       latent_dims: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, s) of x_t = a·x0 + s·ε at noise level `level`, shaped (N, 1, …) to broadcast over latents
    of `latent_dims` dimensions (4: images (N, C, H, W); 5: video (N, C, T, H, W)): VP objectives take
    integer timesteps into `alphas_cumprod` (a = √ᾱ, s = √(1 − ᾱ)); flow takes σ (a = 1 − σ, s = σ)."""
    shape = (-1,) + (1,) * (latent_dims - 1)
    if prediction_type == "flow":
        sigma = level.float().view(shape)
        return 1 - sigma, sigma
    ab = alphas_cumprod.to(level.device)[level]
    return ab.sqrt().view(shape), (1 - ab).sqrt().view(shape)


def prediction_from_denoised(prediction_type: str, x_t: torch.Tensor, denoised: torch.Tensor, a: torch.Tensor,
                             s: torch.Tensor) -> torch.Tensor:
    """The objective's prediction (ε, v = a·ε − s·x0, or the velocity ε − x0) from a model's estimate
    of x0 at x_t = a·x0 + s·ε (what hosts that return denoised latents, like ComfyUI, give)."""
    eps = (x_t - a * denoised) / s
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return a * eps - s * denoised
    return eps - denoised


def diffusion_target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor,
                     s: torch.Tensor) -> torch.Tensor:
    """What the objective predicts at x_t = a·x0 + s·ε: ε, v = a·ε − s·x0, or the velocity ε − x0."""
    if prediction_type == "v_prediction":
        return a * noise - s * x0
    if prediction_type == "flow":
        return noise - x0
    return noise


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str, floor: float = 0.0) -> torch.Tensor:
    """Min-SNR-γ (an x0-loss weight of min(snr, γ), at least `floor`) as the weight of the ε loss
    (an ε error is an x0 error × √snr) or of the v loss (× √(snr + 1))."""
    clipped = snr.clamp(min=floor, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def diffusion_loss(
    denoiser: Denoiser,
    latents: torch.Tensor,
    cond: Cond,
    generator: torch.Generator,
    config: TrainConfig,
) -> torch.Tensor:
    """Per-batch denoising loss in the model's own parameterisation: ε or v at a uniformly drawn
    timestep of the VP schedule (min-SNR weighted on request), or the rectified-flow velocity
    ε − x0 at σ from the base's σ sampling (`flow_sampling`)."""
    device = denoiser.device
    kind = denoiser.prediction_type
    noise = torch.randn(latents.shape, generator=generator)
    if config.noise_offset:
        per_channel = (*latents.shape[:2], *(1,) * (latents.dim() - 2))
        noise = noise + config.noise_offset * torch.randn(per_channel, generator=generator)
    if kind == "flow":
        if config.min_snr_gamma:
            raise ValueError("min_snr_gamma weights the ε / v objectives; a flow-matching base trains on the velocity")
        level = flow_sampling(denoiser, config).draw(latents.shape[0], generator, latents.shape[-2:])
    else:
        level = torch.randint(0, denoiser.alphas_cumprod.numel(), (latents.shape[0],), generator=generator)
    a, s = noise_coefficients(kind, level, None if kind == "flow" else denoiser.alphas_cumprod, latents.dim())
    x0, noise, a, s = latents.to(device), noise.to(device), a.to(device), s.to(device)
    x_t = a * x0 + s * noise
    target = diffusion_target(kind, x0, noise, a, s)
    pred = denoiser.predict(x_t, level.to(device), cond)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.dim())))
    if config.min_snr_gamma:
        ab = denoiser.alphas_cumprod[level]
        per_sample = per_sample * min_snr_weight((ab / (1 - ab)).to(device), config.min_snr_gamma, kind)
    return per_sample.mean()


def stack_cond(conds: Sequence[Cond]) -> Cond:
    """One batch from per-example conditionings: tensors concatenated along the batch, other values
    (a host's constants, e.g. a token count) kept when every example has the same."""
    out: Cond = {}
    for key, first in conds[0].items():
        values = [c[key] for c in conds]
        if isinstance(first, torch.Tensor):
            out[key] = torch.cat(values)
        elif all(type(v) is type(first) and v == first for v in values[1:]):
            out[key] = first
        else:
            raise ValueError(f"conditioning {key!r} differs between the examples of one batch and cannot be stacked; "
                             "use batch size 1")
    return out

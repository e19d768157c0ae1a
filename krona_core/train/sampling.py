"""Sampling from the denoiser during training, for prior-preservation class images and validation
previews: deterministic DDIM (VP bases) or Euler on the velocity over the family's shifted σ
schedule (flow bases), with classifier-free guidance."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from .config import TrainConfig, TrainingInterrupted
from .data import Example
from .denoiser import Cond, Denoiser, SizeInfo
from .objective import flow_sampling, stack_cond


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, cond: Cond, uncond: Cond, shape: tuple[int, ...], seed: int,
                steps: int = 20, guidance: float = 5.0, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Deterministic DDIM (η = 0) with classifier-free guidance; returns latents. progress(done,
    steps) after each step."""
    ab = denoiser.alphas_cumprod.double()
    timesteps = torch.linspace(ab.numel() - 1, 0, steps).round().long()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    both = stack_cond([uncond, cond])
    for i, t in enumerate(timesteps):
        a_t = ab[t]
        inp = torch.cat([x, x]).float().to(denoiser.device)
        out = denoiser.predict(inp, torch.full((inp.shape[0],), int(t), device=denoiser.device), both).double().cpu()
        out_u, out_c = out.chunk(2)
        out = out_u + guidance * (out_c - out_u)
        if denoiser.prediction_type == "v_prediction":
            x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
            eps = (1 - a_t).sqrt() * x + a_t.sqrt() * out
        else:
            eps = out
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        a_prev = ab[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, dtype=torch.float64)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        if progress is not None:
            progress(i + 1, steps)
    return x.float()


@torch.no_grad()
def flow_sample(denoiser: Denoiser, cond: Cond, uncond: Cond | None, shape: tuple[int, ...], seed: int, steps: int = 20,
                guidance: float = 5.0, progress: Callable[[int, int], None] | None = None,
                config: TrainConfig | None = None) -> torch.Tensor:
    """Euler steps x ← x + (σ_next − σ)·v from pure noise at σ = 1 over the base's shifted σ
    schedule; guidance on the velocity (none when `uncond` is None); returns latents."""
    sigmas = flow_sampling(denoiser, config or TrainConfig()).schedule(steps, shape[-2:])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    both = stack_cond([uncond, cond]) if uncond is not None else cond
    for i in range(steps):
        inp = (torch.cat([x, x]) if uncond is not None else x).float().to(denoiser.device)
        level = torch.full((inp.shape[0],), float(sigmas[i]), device=denoiser.device)
        v = denoiser.predict(inp, level, both).double().cpu()
        if uncond is not None:
            v_u, v_c = v.chunk(2)
            v = v_u + guidance * (v_c - v_u)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        if progress is not None:
            progress(i + 1, steps)
    return x.float()


def sample(denoiser: Denoiser, cond: Cond, uncond: Cond | None, shape: tuple[int, ...], seed: int, steps: int = 20,
           progress: Callable[[int, int], None] | None = None, config: TrainConfig | None = None) -> torch.Tensor:
    """Latents from the base's own kind of sampler (DDIM or flow Euler); no guidance without `uncond`."""
    if denoiser.prediction_type == "flow":
        return flow_sample(denoiser, cond, uncond, shape, seed, steps, progress=progress, config=config)
    if uncond is None:
        return ddim_sample(denoiser, cond, cond, shape, seed, steps, guidance=1.0, progress=progress)
    return ddim_sample(denoiser, cond, uncond, shape, seed, steps, progress=progress)


def class_latents(denoiser: Denoiser, class_prompt: str, indices: Sequence[int], latent_shape: tuple[int, int, int],
                  seed: int, steps: int = 20, should_stop: Callable[[], bool] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, latent (C, h, w)) of prior-preservation images sampled from the base model (adapters
    not yet attached), image i from seed + i. should_stop() is polled before each and cancels with
    TrainingInterrupted (no step done, no checkpoint)."""
    h, w = latent_shape[-2] * 8, latent_shape[-1] * 8
    size = SizeInfo((h, w), (0, 0), (h, w))
    cond = denoiser.encode_prompts([class_prompt], [size])
    uncond = denoiser.encode_prompts([""], [size])
    for i in indices:
        if should_stop is not None and should_stop():
            raise TrainingInterrupted(0, None)
        yield i, sample(denoiser, cond, uncond, (1, *latent_shape), seed + i, steps)[0]


def generate_class_examples(denoiser: Denoiser, class_prompt: str, count: int, latent_shape: tuple[int, int, int],
                            seed: int, steps: int = 20, progress: Callable[[int, int], None] | None = None,
                            should_stop: Callable[[], bool] | None = None) -> list[Example]:
    """Prior-preservation examples kept in memory (`class_images.py` saves and reuses them);
    progress(done, count) after each image."""
    h, w = latent_shape[-2] * 8, latent_shape[-1] * 8
    size = SizeInfo((h, w), (0, 0), (h, w))
    out = []
    for i, latent in class_latents(denoiser, class_prompt, range(count), latent_shape, seed, steps, should_stop):
        out.append(Example(latent, class_prompt, size, True))
        if progress is not None:
            progress(i + 1, count)
    return out


def preview(denoiser: Denoiser, config: TrainConfig, like: Example,
            progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """One validation image (3, H, W) in [0, 1] at the fixed seed and prompt; progress(done, total)
    after each sampling step. An example with precomputed conditioning and no validation prompt is
    previewed on its own conditioning, without guidance (there may be no text encoder to encode "")."""
    size = like.size
    if like.cond is not None and not config.validation_prompt:
        cond, uncond = like.cond, None
    else:
        cond = denoiser.encode_prompts([config.validation_prompt or like.prompt], [size])
        uncond = denoiser.encode_prompts([""], [size])
    latents = sample(denoiser, cond, uncond, (1, *like.latent.shape), config.validation_seed, config.validation_steps,
                     progress=progress, config=config)
    with torch.no_grad():
        image = denoiser.decode_latents(latents.to(denoiser.device)).float().cpu()[0]
    return ((image + 1) / 2).clamp(0, 1)

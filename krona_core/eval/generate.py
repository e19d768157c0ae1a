"""Images from a denoiser for a list of prompts: deterministic DDIM with classifier-free guidance
(the trainer's own sampler), decoded to (N, 3, H, W) in [0, 1]."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..train.denoiser import Denoiser, SizeInfo
from ..train.sampling import ddim_sample

GUIDANCE = 4.0
STEPS = 20


@torch.no_grad()
def generate(denoiser: Denoiser, prompts: Sequence[str], latent_shape: tuple[int, int, int], seed: int,
             guidance: float = GUIDANCE, steps: int = STEPS, batch: int = 64) -> np.ndarray:
    """One image per prompt; image i's noise depends only on (seed, i), so the same call on two
    models (base and adapted) starts every image from the same noise."""
    out = []
    for start in range(0, len(prompts), batch):
        chunk = list(prompts[start:start + batch])
        size = SizeInfo((0, 0), (0, 0), (0, 0))
        cond = denoiser.encode_prompts(chunk, [size] * len(chunk))
        uncond = denoiser.encode_prompts([""] * len(chunk), [size] * len(chunk))
        latents = ddim_sample(denoiser, cond, uncond, (len(chunk), *latent_shape), seed * 100_003 + start, steps, guidance)
        images = denoiser.decode_latents(latents.to(denoiser.device)).float().cpu()
        out.append(((images + 1) / 2).clamp(0, 1).numpy())
    return np.concatenate(out)

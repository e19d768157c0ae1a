"""Training examples: images bucketed by aspect and encoded once to latents, and the seeded
batch order (one generator, so runs are reproducible and resumable bit for bit)."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .dataset import draw_seed
from .denoiser import Cond, Denoiser, SizeInfo


@dataclass
class Example:
    latent: torch.Tensor  # (C, h, w) on the CPU
    prompt: str
    size: SizeInfo
    is_class: bool = False
    cond: Cond | None = None  # precomputed conditioning (batch of 1): trains on it instead of encoding `prompt`


def buckets_for(resolution: int, step: int = 64, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """(height, width) buckets of about resolution² pixels, sides multiples of `step`."""
    area = resolution * resolution
    out = set()
    width = step
    while width <= resolution * max_aspect:
        height = int(area // width) // step * step
        if height >= step and max(width, height) / min(width, height) <= max_aspect:
            out.add((height, width))
        width += step
    out.add((resolution, resolution))
    return sorted(out)


CROPS = ("random", "center")


def fit_to_bucket(image: torch.Tensor, buckets: Sequence[tuple[int, int]],
                  crop_seed: int | None = None) -> tuple[torch.Tensor, SizeInfo]:
    """Resize (keeping aspect) and crop an image (3, H, W) in [0, 1] to its nearest-aspect bucket:
    centred, or at a random offset drawn from `crop_seed` (latents are encoded once, so the crop is
    chosen once per image, as the official DiffuseKronA / diffusers DreamBooth scripts do)."""
    _, h, w = image.shape
    bh, bw = min(buckets, key=lambda b: abs(math.log((b[1] / b[0]) / (w / h))))
    scale = max(bh / h, bw / w)
    nh, nw = max(bh, round(h * scale)), max(bw, round(w * scale))
    resized = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    if crop_seed is None:
        top, left = (nh - bh) // 2, (nw - bw) // 2
    else:
        rng = random.Random(crop_seed)
        top, left = rng.randint(0, nh - bh), rng.randint(0, nw - bw)
    return resized[:, top:top + bh, left:left + bw].clamp(0, 1), SizeInfo((h, w), (top, left), (bh, bw))


def prepare_examples(
    denoiser: Denoiser,
    images: Sequence[torch.Tensor],
    prompts: Sequence[str],
    resolution: int,
    is_class: bool = False,
    batch: int = 4,
    bucket_step: int = 64,
    crop: str = "center",
    seed: int = 0,
) -> list[Example]:
    """Bucket, encode once with the (frozen) VAE, and keep latents on the CPU.

    bucket_step is the side granularity in pixels: 64 (8 latent pixels) for SD VAEs; crop is
    "center" or "random" (each image's offset drawn from `seed` and its index).
    """
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
    buckets = buckets_for(resolution, bucket_step)
    fitted = [fit_to_bucket(img, buckets, draw_seed(seed, 0, 0, i, "crop") if crop == "random" else None)
              for i, img in enumerate(images)]
    examples: list[Example] = []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (img, _) in enumerate(fitted):
        groups.setdefault(tuple(img.shape[1:]), []).append(i)
    latents: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for indices in groups.values():
            for start in range(0, len(indices), batch):
                chunk = indices[start:start + batch]
                pixels = torch.stack([fitted[i][0] for i in chunk]) * 2 - 1
                encoded = denoiser.encode_images(pixels).float().cpu()
                for i, lat in zip(chunk, encoded):
                    latents[i] = lat
    for i in range(len(images)):
        examples.append(Example(latents[i], prompts[i], fitted[i][1], is_class))
    return examples


def examples_from_latents(latents: torch.Tensor, prompts: Sequence[str], scale: int = 8, is_class: bool = False,
                          conds: Sequence[Cond] | None = None) -> list[Example]:
    """Examples straight from latents (teacher–student tests, cached datasets, a host's latents),
    with their precomputed conditioning when `conds` is given."""
    out = []
    for i, (lat, prompt) in enumerate(zip(latents, prompts)):
        h, w = lat.shape[-2] * scale, lat.shape[-1] * scale
        out.append(Example(lat.float().cpu(), prompt, SizeInfo((h, w), (0, 0), (h, w)), is_class,
                           conds[i] if conds is not None else None))
    return out


def dataset_hash(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(ex.prompt.encode())
        digest.update(ex.latent.numpy().astype("float32").tobytes())
        for key, value in sorted((ex.cond or {}).items()):
            digest.update(key.encode())
            if isinstance(value, torch.Tensor):
                digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class Sampler:
    """Batches from one aspect bucket at a time, each epoch a fresh permutation (own generator)."""

    def __init__(self, examples: Sequence[Example], batch_size: int):
        self.buckets: dict[tuple, list[int]] = {}
        for i, ex in enumerate(examples):
            self.buckets.setdefault(tuple(ex.latent.shape), []).append(i)
        self.batch_size = batch_size
        self.queue: list[list[int]] = []

    def _refill(self, generator: torch.Generator) -> None:
        batches = []
        for indices in self.buckets.values():
            order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            batches += [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        self.queue = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def next(self, generator: torch.Generator) -> list[int]:
        if not self.queue:
            self._refill(generator)
        return self.queue.pop()

    def state(self) -> list[list[int]]:
        return [list(b) for b in self.queue]

    def load_state(self, queue: list[list[int]]) -> None:
        self.queue = [list(b) for b in queue]

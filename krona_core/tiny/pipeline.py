"""The embedded tiny default: an SD-shaped pipeline small enough to train on a CPU in seconds.

Seeded UNet + CLIP text encoder + VAE (diffusers/transformers classes with small widths), a
hashing word tokenizer (real CLIP vocabularies are downloads), and procedurally drawn sample
images of a "subject". Used by `python -m krona_core demo`, the tests and the benchmarks; not part
of the library's API.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

TINY_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
TINY_TEXT = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(16, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
    scaling_factor=5.0,  # brings the seeded VAE's latents of the sample images to about unit variance
)


class HashTokenizer:
    """Words → ids by CRC32 into the vocabulary; BOS 0, EOS/pad 1. Deterministic, no files."""

    def __init__(self, vocab_size: int = TINY_TEXT["vocab_size"], max_length: int = TINY_TEXT["max_position_embeddings"]):
        self.vocab_size = vocab_size
        self.max_length = max_length

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            ids = [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in prompt.lower().split()]
            ids = [0, *ids[: self.max_length - 2], 1]
            rows.append(ids + [1] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


@dataclass
class TinyPipeline:
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    tokenizer: HashTokenizer
    scheduler: object

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.text_encoder(self.tokenizer(prompts))[0]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) in [-1, 1] → scaled latents (posterior mean)."""
        with torch.no_grad():
            return self.vae.encode(images).latent_dist.mean * self.vae.config.scaling_factor


def build_tiny_pipeline(seed: int = 0) -> TinyPipeline:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    vae = AutoencoderKL(**TINY_VAE)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    for model in (unet, text_encoder, vae):
        model.eval().requires_grad_(False)
    return TinyPipeline(unet, text_encoder, vae, HashTokenizer(), scheduler)


def sample_images(count: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """A "subject" (an orange ring with a blue dot) on varied backgrounds, (N, 3, H, W) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for _ in range(count):
        background = rng.uniform(0.1, 0.9, size=3).astype(np.float32)
        gradient = (xx * rng.uniform(-0.3, 0.3) + yy * rng.uniform(-0.3, 0.3))[None]
        img = np.clip(background[:, None, None] + gradient, 0, 1)
        cx, cy = rng.uniform(0.35, 0.65, size=2)
        radius = np.hypot(xx - cx, yy - cy)
        ring = (radius > 0.16) & (radius < 0.26)
        dot = radius < 0.07
        img[:, ring] = np.array([1.0, 0.55, 0.1], dtype=np.float32)[:, None]
        img[:, dot] = np.array([0.1, 0.3, 1.0], dtype=np.float32)[:, None]
        images.append(img * 2 - 1)
    return torch.from_numpy(np.stack(images))

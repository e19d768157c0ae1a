"""Reproduce the world base from a seed: the VAE on rendered scenes first (then its decoder alone,
for sharp edges), then the UNet and text encoder on the encoded latents (v-prediction on SD's
scaled-linear schedule rescaled to zero terminal SNR, min-SNR weighting floored at 1, caption
dropout for classifier-free guidance, EMA weights). Uses a GPU when there is one.

Why v-prediction with zero terminal SNR (bench/WORLD_BASE.md, "Stop 23"): on SD's own schedule x_t
at t = 999 still shows x0's layout, so the ε loss never needs the position words and the base
ignored them (position at chance); with the last step pure noise the model must place the shape
from the text alone.

`python -m krona_core pretrain-world --out FILE` (see `Recipe` for every setting).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..train.diffusers_backend import sd_alphas_cumprod
from ..train.objective import diffusion_target, min_snr_weight
from . import model as world_model
from . import scenes

Log = Callable[[str], None]


@dataclass
class Recipe:
    seed: int = 0
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 3e-3
    vae_kl: float = 1e-6
    vae_composites: float = 0.5  # share of the VAE's images that are uncaptioned composites (scenes.composite)
    decoder_steps: int = 1500  # then the decoder alone (encoder frozen, so the latents stay the same): sharper edges
    decoder_lr: float = 1e-3
    dataset: int = 12000  # training scenes (held-out combinations excluded), encoded once
    unet_steps: int = 4000  # length of the lr schedule
    unet_stop: int | None = None  # stop early at this step of it (None: run the whole schedule)
    unet_batch: int = 64
    unet_lr: float = 2e-3
    warmup: int = 50
    caption_dropout: float = 0.1
    attribute_dropout: float = 0.2  # each optional attribute left out of a caption
    min_snr_gamma: float = 5.0
    snr_floor: float = 1.0  # x0-loss weight at least this at high noise (min-SNR alone gives it SNR → 0 at t = 999)
    prediction: str = "v_prediction"  # or epsilon (SD 1.x's; the first shipped base, which ignored position words)
    zero_terminal_snr: bool = True  # the schedule's last step pure noise (needs v_prediction)
    ema: float = 0.995
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        if self.prediction not in ("epsilon", "v_prediction"):
            raise ValueError(f"Recipe.prediction: expected epsilon or v_prediction, got {self.prediction!r}")
        if self.zero_terminal_snr and self.prediction != "v_prediction":
            raise ValueError("Recipe.zero_terminal_snr needs prediction='v_prediction' (ε is undefined at zero SNR)")

    def apply_schedule(self, model: world_model.WorldModel) -> None:
        """Give the model this recipe's prediction type and schedule (what its denoiser samples with)."""
        model.prediction_type, model.zero_terminal_snr = self.prediction, self.zero_terminal_snr


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(model: world_model.WorldModel, recipe: Recipe, device: torch.device, log: Log) -> None:
    vae = model.vae.to(device).train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), recipe.vae_lr, weight_decay=0.0)
    started = time.perf_counter()
    for step in range(recipe.vae_steps):
        pixels = scenes.vae_sample(recipe.vae_batch, recipe.seed * 1_000_003 + step, recipe.vae_composites)
        x = torch.from_numpy(pixels).to(device) * 2 - 1
        for group in opt.param_groups:
            group["lr"] = recipe.vae_lr * _cosine(step, recipe.vae_steps, 50)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 0.2 * F.l1_loss(recon, x) + recipe.vae_kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == recipe.vae_steps - 1:
            log(f"vae step {step + 1}/{recipe.vae_steps} loss {loss.item():.5f} ({time.perf_counter() - started:.0f} s)")
    vae.eval().requires_grad_(False)


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def refine_decoder(model: world_model.WorldModel, recipe: Recipe, device: torch.device, log: Log) -> None:
    """Train the decoder alone on the frozen encoder's latents with L1 + edge losses (MSE alone blurs
    corners: squares, triangles and diamonds decode as discs). The latent space is unchanged."""
    vae = model.vae.to(device)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in decoder:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(decoder, recipe.decoder_lr, weight_decay=0.0)
    started = time.perf_counter()
    for step in range(recipe.decoder_steps):
        pixels = scenes.vae_sample(recipe.vae_batch, recipe.seed * 1_000_003 + 500_000 + step, recipe.vae_composites)
        x = torch.from_numpy(pixels).to(device) * 2 - 1
        for group in opt.param_groups:
            group["lr"] = recipe.decoder_lr * _cosine(step, recipe.decoder_steps, 50)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mean
        recon = vae.decode(latents).sample
        loss = F.l1_loss(recon, x) + sum(F.l1_loss(a, b) for a, b in zip(_edges(recon), _edges(x)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == recipe.decoder_steps - 1:
            log(f"decoder step {step + 1}/{recipe.decoder_steps} loss {loss.item():.5f} ({time.perf_counter() - started:.0f} s)")
    vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(model: world_model.WorldModel, recipe: Recipe, device: torch.device) -> tuple[torch.Tensor, list[scenes.Scene]]:
    """Posterior means of the training scenes, unscaled, and the scenes."""
    pixels, drawn = scenes.sample(recipe.dataset, recipe.seed + 7, heldout=False)
    latents = [model.vae.encode(torch.from_numpy(pixels[i:i + 256]).to(device) * 2 - 1).latent_dist.mean
               for i in range(0, len(pixels), 256)]
    return torch.cat(latents), drawn


def schedule_and_weights(recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """ᾱ per timestep and the loss weight per timestep (min-SNR-γ, floored at snr_floor)."""
    ab = sd_alphas_cumprod(zero_terminal_snr=recipe.zero_terminal_snr).double()
    weight = min_snr_weight(ab / (1 - ab), recipe.min_snr_gamma, recipe.prediction, recipe.snr_floor)
    return ab.float(), weight.float()


def train_unet(model: world_model.WorldModel, latents: torch.Tensor, drawn: list[scenes.Scene], recipe: Recipe,
               device: torch.device, log: Log, checkpoint: Callable[[int, world_model.WorldModel], None]) -> world_model.WorldModel:
    """Returns a copy holding the EMA weights; `checkpoint(step, ema)` at every checkpoint."""
    unet, te = model.unet.to(device).train().requires_grad_(True), model.text_encoder.to(device).train().requires_grad_(True)
    ema = copy.deepcopy(model)
    params = [*unet.parameters(), *te.parameters()]
    opt = torch.optim.AdamW(params, recipe.unet_lr, weight_decay=1e-2)
    ab, weight = schedule_and_weights(recipe)
    ab, weight = ab.to(device), weight.to(device)
    g = torch.Generator().manual_seed(recipe.seed + 11)
    rng = np.random.default_rng(recipe.seed + 13)
    started = time.perf_counter()
    last = min(recipe.unet_stop or recipe.unet_steps, recipe.unet_steps)
    for step in range(last):
        idx = torch.randint(0, len(latents), (recipe.unet_batch,), generator=g)
        x0 = latents[idx] * model.vae.config.scaling_factor
        ids = model.tokenizer(["" if rng.random() < recipe.caption_dropout else
                               scenes.partial_caption(drawn[i], rng, recipe.attribute_dropout) for i in idx.tolist()])
        t = torch.randint(0, ab.numel(), (len(idx),), generator=g).to(device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        a = ab[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        for group in opt.param_groups:
            group["lr"] = recipe.unet_lr * _cosine(step, recipe.unet_steps, recipe.warmup)
        target = diffusion_target(recipe.prediction, x0, eps, a.sqrt(), (1 - a).sqrt())
        pred = unet(x_t, t, te(ids.to(device))[0]).sample
        loss = (weight[t] * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for name in ("unet", "text_encoder"):
                for pe, p in zip(getattr(ema, name).parameters(), getattr(model, name).parameters()):
                    pe.lerp_(p, 1 - recipe.ema)
        if step % 25 == 0 or step == last - 1:
            log(f"unet step {step + 1}/{recipe.unet_steps} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)")
        if (step + 1) % recipe.checkpoint_every == 0 or step == last - 1:
            checkpoint(step + 1, ema)
    for module in (unet, te):
        module.eval().requires_grad_(False)
    return ema


def pretrain(out: str | Path, recipe: Recipe = Recipe(), log: Log = print, overwrite: bool = False) -> world_model.WorldModel:
    """Train the base and write it to `out` (also at each checkpoint, so a stopped run leaves a usable
    base); the metadata holds the recipe, the steps done and the run time."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another name or allow overwriting")
    started = time.perf_counter()
    model = world_model.build(recipe.seed)
    recipe.apply_schedule(model)
    phases: dict[str, float] = {}
    for name, phase in (("vae", train_vae), ("decoder", refine_decoder)):
        begun = time.perf_counter()
        phase(model, recipe, device, log)
        phases[f"{name}_s"] = round(time.perf_counter() - begun, 1)
    latents, drawn = encode_dataset(model, recipe, device)
    model.vae.register_to_config(scaling_factor=float(1 / latents.std()))
    log(f"encoded {len(latents)} scenes; latent std {latents.std():.3f} → scaling factor {model.vae.config.scaling_factor:.4f}")
    unet_started = time.perf_counter()

    def checkpoint(step: int, ema: world_model.WorldModel) -> None:
        now = time.perf_counter()
        record = {**dataclasses.asdict(recipe), "unet_steps_done": step, "device": device.type,
                  "threads": torch.get_num_threads(), "seconds": round(now - started, 1),
                  "phase_seconds": {**phases, "unet_s": round(now - unet_started, 1) if step else 0.0},
                  "torch": torch.__version__}
        world_model.save(ema, out, record, overwrite=True)
        log(f"checkpoint at unet step {step} → {out}")

    checkpoint(0, model)  # the VAE alone: its reconstructions can be checked while the UNet trains
    ema = train_unet(model, latents, drawn, recipe, device, log, checkpoint)
    return dataclasses.replace(ema, unet=ema.unet.cpu(), vae=ema.vae.cpu(), text_encoder=ema.text_encoder.cpu())

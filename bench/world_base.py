"""Short experiments on the world base's architecture (issue 14), run before changing the recipe:

- `unet VARIANT STEPS`: a fresh UNet + text encoder trained with the pretraining's own loop on the
  shipped VAE's latents for STEPS steps (a STEPS-long schedule), then scored on held-out prompt
  following (`world_metrics.prompt_following`) and on where it puts "a large red square at the
  {position}" (mean and spread of the shape's centroid per position word);
- `vae VARIANT STEPS`: a fresh VAE trained for STEPS steps, scored by the detectors on
  encode → decode of 200 held-out scenes (errors per attribute, and per shape × size) and of 24
  renders of the personalisation task's emblem (how many the emblem detector still accepts);
- `position VARIANT STEPS`: the same, on a one-attribute world (a large red circle on a plain
  background at one of the 5 positions, batch 16): can the architecture learn to place a shape by
  the position word at all, and how fast?
- `base`: the shipped base on both scores.

A UNet variant with the suffix `+coords` (e.g. `position base+coords 1000`) also sees two coordinate
channels: a diagnostic of whether the architecture's lack of absolute position is what stops it.

Results are appended as JSON lines to --out; bench/WORLD_BASE.md records the runs.
`python bench/world_base.py unet deep3 600 --evals 300,600`
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from krona_core.eval.generate import generate
from krona_core.eval.world_metrics import is_emblem, prompt_following, subject_similarity
from krona_core.world import detect, scenes, task
from krona_core.world import model as world_model
from krona_core.world import pretrain

THREE_LEVELS = dict(down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3)
UNETS = {  # changes to world_model.UNET
    "base": {},
    "deep3": dict(THREE_LEVELS, block_out_channels=(32, 64, 64)),  # 8×8 → 4×4 → 2×2
    "lpb2": dict(layers_per_block=2),
}
VAES = {  # (changes to world_model.VAE, loss with the decoder's edge terms, decode the posterior mean,
    # share of uncaptioned composites among the images)
    "base": ({}, False, False, 0.0),
    "edge": ({}, True, False, 0.0),
    "edge_mean": ({}, True, True, 0.0),
    "latent16": (dict(latent_channels=16), False, False, 0.0),
    "composites": ({}, False, False, 0.5),  # the recipe's since stop 24
}


def coordinate_unet(**config):
    """A diagnostic, not an SD shape: the UNet also sees two channels of absolute (row, col)
    coordinates, so whether it can place a shape by a word no longer rests on what zero padding
    tells its convolutions about where they are."""
    from diffusers import UNet2DConditionModel

    class CoordinateUNet(UNet2DConditionModel):
        def forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
            n, _, h, w = sample.shape
            rows, cols = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            coords = torch.stack([rows, cols]).to(sample).expand(n, -1, -1, -1)
            return super().forward(torch.cat([sample, coords], dim=1), timestep, encoder_hidden_states, *args, **kwargs)

    return CoordinateUNet(**{**config, "in_channels": config["in_channels"] + 2})


def position_spread(denoiser, shape: str = "square", count: int = 16, seed: int = 3) -> dict[str, list[float]]:
    """Per position word: [mean row, mean col, std row, std col] of the drawn shape's centroid and
    the share of images whose detected position is the word's."""
    out = {}
    for position in scenes.POSITIONS:
        images = generate(denoiser, [f"a large red {shape} at the {position} on a plain background"] * count, (8, 8, 8), seed)
        centres = [np.argwhere(m).mean(axis=0) + 0.5 for m in map(detect.foreground, images) if m.sum() >= detect.MIN_AREA]
        c = np.array(centres) if centres else np.full((1, 2), np.nan)
        hits = sum(detect.detect_position(tuple(centre)) == position for centre in centres) / count
        out[position] = [round(float(v), 1) for v in (*c.mean(axis=0), *c.std(axis=0))] + [round(hits, 2)]
    return out


SWAPS = {"position": ("left", "right"), "shape": ("square", "circle"), "colour": ("red", "blue"),
         "size": ("large", "small"), "background": ("plain", "striped")}


@torch.no_grad()
def conditioning(model: world_model.WorldModel, t: int = 700, seed: int = 0) -> dict[str, list[float]]:
    """Per attribute: how far the text encoder's states move when the caption's word for it is
    swapped (norm of the difference at that word) and how far the UNet's ε moves (relative)."""
    caption = "a large red square at the left on a plain background"
    x = torch.randn(8, 8, 8, 8, generator=torch.Generator().manual_seed(seed))
    states = model.text_encoder(model.tokenizer([caption]))[0]
    eps = model.unet(x, torch.full((8,), t), states.expand(8, -1, -1)).sample
    out = {}
    for attribute, (word, other) in SWAPS.items():
        swapped = model.text_encoder(model.tokenizer([caption.replace(word, other)]))[0]
        moved = model.unet(x, torch.full((8,), t), swapped.expand(8, -1, -1)).sample
        out[attribute] = [round(float((swapped - states).norm(dim=-1).max()), 3), round(float((moved - eps).norm() / eps.norm()), 4)]
    return out


def scores(model: world_model.WorldModel, count: int) -> dict:
    denoiser = model.denoiser()
    measured = prompt_following(denoiser, count=count)
    return {"prompt_following": {k: round(v, 3) for k, v in measured.items()}, "centroids": position_spread(denoiser),
            "conditioning": conditioning(model)}


@torch.no_grad()
def one_attribute_world(model: world_model.WorldModel, count: int = 1000, seed: int = 5) -> tuple[torch.Tensor, list]:
    rng = np.random.default_rng(seed)
    drawn = [scenes.Scene("circle", "red", "large", list(scenes.POSITIONS)[rng.integers(5)], "plain") for _ in range(count)]
    pixels = torch.from_numpy(np.stack([scenes.render(s, rng) for s in drawn])) * 2 - 1
    return torch.cat([model.vae.encode(pixels[i:i + 250]).latent_dist.mean for i in range(0, count, 250)]), drawn


def run_unet(variant: str, steps: int, evals: list[int], count: int, log, toy: bool = False,
             embed_std: float | None = None, latent_scale: float = 1.0, snr_floor: float = 0.0,
             v_zsnr: bool = False) -> None:
    from diffusers import UNet2DConditionModel

    shipped, _ = world_model.load()
    model = world_model.build(0, shipped.vae.config.scaling_factor)
    torch.manual_seed(0)
    config = {**world_model.UNET, **UNETS[variant.removesuffix("+coords")]}
    model.unet = coordinate_unet(**config) if variant.endswith("+coords") else UNet2DConditionModel(**config)
    model.vae = shipped.vae
    # latents scaled down: less of x0 survives at t = 999 (the schedule's terminal SNR, times the scale²)
    model.vae.register_to_config(scaling_factor=shipped.vae.config.scaling_factor * latent_scale)
    if embed_std:  # word embeddings drawn wider than CLIP's 0.02, so words start far apart
        model.text_encoder.get_input_embeddings().weight.data.normal_(0, embed_std)
    recipe = pretrain.Recipe(unet_steps=steps, unet_stop=None, checkpoint_every=min(evals), unet_batch=16 if toy else 64,
                             snr_floor=snr_floor, prediction="v_prediction" if v_zsnr else "epsilon",
                             zero_terminal_snr=v_zsnr)
    recipe.apply_schedule(model)
    started = time.perf_counter()
    latents, drawn = one_attribute_world(model) if toy else pretrain.encode_dataset(model, recipe, torch.device("cpu"))

    def checkpoint(step: int, ema: world_model.WorldModel) -> None:
        if step in evals:  # the raw weights: an EMA of a short run still holds the initialisation
            measured = {"centroids": position_spread(model.denoiser(), "circle")} if toy else scores(model, count)
            log({"position" if toy else "unet": variant, "params": sum(p.numel() for p in model.unet.parameters()),
                 "step": step, "batch": recipe.unet_batch, "embed_std": embed_std, "latent_scale": latent_scale, "snr_floor": snr_floor, "v_zsnr": v_zsnr, "seconds": round(time.perf_counter() - started), **measured})
            for module in (model.unet, model.text_encoder):
                module.train().requires_grad_(True)  # the denoiser froze them

    pretrain.train_unet(model, latents, drawn, recipe, torch.device("cpu"), lambda line: None, checkpoint)


def _round_trip(vae: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    """Encode (posterior mean) → decode, in [0, 1]."""
    x = torch.from_numpy(pixels) * 2 - 1
    return ((vae.decode(vae.encode(x).latent_dist.mean).sample + 1) / 2).clamp(0, 1).numpy()


@torch.no_grad()
def reconstruction_errors(vae: torch.nn.Module, count: int = 200, seed: int = 99) -> dict:
    pixels, drawn = scenes.sample(count, seed, heldout=True)
    images = _round_trip(vae, pixels)
    errors, shapes = Counter(), Counter()
    for image, scene in zip(images, drawn):
        for attribute, hit in detect.attribute_hits(detect.detect(image), scene).items():
            errors[attribute] += not hit
        if detect.detect(image).shape != scene.shape:
            shapes[f"{scene.size} {scene.shape}"] += 1
    refs = task.references(24)
    kept = _round_trip(vae, refs)
    return {"of": count, "errors": dict(errors), "shape_errors": dict(shapes),
            "emblem_kept_of_24": sum(map(is_emblem, kept)), "emblem_similarity": round(subject_similarity(kept, refs), 3)}


def run_vae(variant: str, steps: int, evals: list[int], log) -> None:
    from diffusers import AutoencoderKL

    changes, edge, use_mean, share = VAES[variant]
    torch.manual_seed(0)
    vae = AutoencoderKL(**{**world_model.VAE, **changes}).train()
    recipe = pretrain.Recipe()
    opt = torch.optim.AdamW(vae.parameters(), recipe.vae_lr, weight_decay=0.0)
    started = time.perf_counter()
    for step in range(steps):
        x = torch.from_numpy(scenes.vae_sample(recipe.vae_batch, step, share)) * 2 - 1
        for group in opt.param_groups:
            group["lr"] = recipe.vae_lr * pretrain._cosine(step, steps, 50)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mean if use_mean else posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 0.2 * F.l1_loss(recon, x) + recipe.vae_kl * posterior.kl().mean()
        if edge:
            loss = loss + sum(F.l1_loss(a, b) for a, b in zip(pretrain._edges(recon), pretrain._edges(x)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step + 1 in evals:
            vae.eval()
            log({"vae": variant, "params": sum(p.numel() for p in vae.parameters()), "step": step + 1,
                 "loss": round(loss.item(), 4), "seconds": round(time.perf_counter() - started), **reconstruction_errors(vae)})
            vae.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("unet", "position", "vae", "base"))
    parser.add_argument("variant", nargs="?", default="base")
    parser.add_argument("steps", nargs="?", type=int, default=600)
    parser.add_argument("--evals", default="", help="steps to score at, comma-separated (default: the last)")
    parser.add_argument("--count", type=int, default=60, help="held-out captions for prompt following")
    parser.add_argument("--embed-std", type=float, default=None, help="unet/position: word embeddings' init std")
    parser.add_argument("--latent-scale", type=float, default=1.0,
                        help="unet/position: the VAE's scaling factor times this (a lower terminal SNR)")
    parser.add_argument("--snr-floor", type=float, default=0.0, help="unet/position: the recipe's snr_floor")
    parser.add_argument("--v-zsnr", action="store_true",
                        help="unet/position: v-prediction on the zero-terminal-SNR schedule")
    parser.add_argument("--out", type=Path, default=Path("world_base.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    evals = [int(s) for s in args.evals.split(",") if s] or [args.steps]

    def log(record: dict) -> None:
        print(json.dumps(record), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")

    if args.what in ("unet", "position"):
        run_unet(args.variant, args.steps, evals, args.count, log, toy=args.what == "position", embed_std=args.embed_std,
                 latent_scale=args.latent_scale, snr_floor=args.snr_floor,
                 v_zsnr=args.v_zsnr)
    elif args.what == "vae":
        run_vae(args.variant, args.steps, evals, log)
    else:
        shipped, recipe = world_model.load()
        log({"base": "shipped", "unet_steps_done": recipe["unet_steps_done"], **scores(shipped, args.count),
             **reconstruction_errors(shipped.vae)})


if __name__ == "__main__":
    main()

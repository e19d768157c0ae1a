"""`python -m krona_core demo`: the whole loop on the embedded tiny default, no downloads.

attach → train (progress bar with loss) → save .krona.safetensors → reload + validate →
apply to a fresh copy of the base → check efficient == merged == trained → parameter table on
the real SD1.5 / SD2.1 / SDXL shapes.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .apply import apply, load
from .counts import format_table, unet_counts
from .layers import attach
from .tiny import build_tiny_pipeline, sample_images

DEMO_A1, DEMO_A2 = 8, 4  # the tiny UNet is 32–64 wide; (64, 8) would fall back to full-size w1
TRIGGER = "sks"


def unique_path(directory: Path, stem: str, suffix: str = ".krona.safetensors") -> Path:
    """directory/stem_00001.suffix with the first free counter (files are never overwritten)."""
    directory.mkdir(parents=True, exist_ok=True)
    counter = 1
    while (directory / f"{stem}_{counter:05d}{suffix}").exists():
        counter += 1
    return directory / f"{stem}_{counter:05d}{suffix}"


def run_demo(out_dir: str | os.PathLike = "demo_out", steps: int = 120, seed: int = 0, lr: float = 3e-3) -> Path:
    from tqdm import tqdm

    started = time.perf_counter()
    torch.manual_seed(seed)
    pipe = build_tiny_pipeline(seed)
    base_unet = copy.deepcopy(pipe.unet)  # untouched reference for the reload check
    images = sample_images(4, 32, seed)
    latents = pipe.encode_images(images)
    cond = pipe.encode_prompt([f"a photo of {TRIGGER} toy"] * len(images))
    print(f"tiny pipeline: UNet {sum(p.numel() for p in pipe.unet.parameters()):,} params, "
          f"{len(images)} sample images → latents {tuple(latents.shape[1:])}")

    handle = attach(pipe.unet, a1=DEMO_A1, a2=DEMO_A2, targets="attn", seed=seed)
    print(f"attached KronA ({DEMO_A1}, {DEMO_A2}) to {len(handle.paths())} attention layers: "
          f"{handle.num_parameters():,} trainable parameters")
    optimizer = torch.optim.AdamW(handle.parameters(), lr=lr, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(seed)
    timesteps_total = pipe.scheduler.config.num_train_timesteps
    losses = []
    bar = tqdm(range(steps), desc="training KronA", unit="step", dynamic_ncols=True, mininterval=0.5)
    for _ in bar:
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, timesteps_total, (len(latents),), generator=generator)
        noisy = pipe.scheduler.add_noise(latents, noise, t)
        pred = pipe.unet(noisy, t, cond).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        window = losses[-20:]
        bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
    bar.close()
    first = sum(losses[:20]) / min(20, len(losses))
    last = sum(losses[-20:]) / min(20, len(losses))
    print(f"loss (mean of 20 steps): first {first:.4f} → last {last:.4f}")

    path = unique_path(Path(out_dir), "krona-demo")
    handle.save(path, trigger_words=[TRIGGER], training={"steps": steps, "lr": lr, "seed": seed, "optimizer": "AdamW", "batch": len(images)})
    print(f"saved {path} ({path.stat().st_size:,} bytes)")

    file = load(path)
    probe_noise = torch.randn(latents.shape, generator=generator)
    probe_t = torch.full((len(latents),), 500)
    probe = pipe.scheduler.add_noise(latents, probe_noise, probe_t)
    with torch.no_grad():
        trained = pipe.unet(probe, probe_t, cond).sample
        reloaded = apply(base_unet, file)
        efficient = base_unet(probe, probe_t, cond).sample
        reloaded.merge()
        merged = base_unet(probe, probe_t, cond).sample
        reloaded.remove()
        plain = base_unet(probe, probe_t, cond).sample
    scale = trained.abs().max().item()
    err_merge = (efficient - merged).abs().max().item() / scale
    err_file = (efficient - trained).abs().max().item() / scale
    effect = (trained - plain).abs().max().item() / scale
    print(f"reloaded file: {len(file.modules)} modules, base {file.base_model}, trigger words {file.trigger_words}")
    print(f"efficient vs merged forward: max rel. difference {err_merge:.2e}")
    print(f"reloaded (fp16 file) vs trained in memory: {err_file:.2e}; adapter effect vs base: {effect:.2e}")
    if err_merge > 1e-4 or err_file > 1e-2 or effect <= err_file:
        raise SystemExit("demo check failed: efficient/merged/reloaded outputs disagree")

    print("\ntrainable parameters on the real architectures (attention q/k/v/out, meta device):")
    print(format_table([unet_counts(b) for b in ("sd1", "sd2", "sdxl")], 64, 8, 4))
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s; inspect the file with "
          f"`python -m krona_core info {path}`")
    return path

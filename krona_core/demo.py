"""`python -m krona_core demo`: the whole loop on the embedded tiny default, no downloads.

train (the real trainer, progress bar with loss) → save .krona.safetensors → reload + validate →
apply to a fresh copy of the base → check efficient == merged == trained → parameter table on
the real SD1.5 / SD2.1 / SDXL shapes.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import torch

from .apply import apply, load
from .counts import format_table, unet_counts
from .evaluation import tiny_denoiser
from .progress import ProgressPrinter, unique_path
from .tiny import build_tiny_pipeline, sample_images
from .train import TrainConfig, prepare_examples, train

DEMO_A1, DEMO_A2 = 8, 4  # the tiny UNet is 32–64 wide; (64, 8) would fall back to a full-size w1
TRIGGER = "sks"


def run_demo(out_dir: str | os.PathLike = "demo_out", steps: int = 60, seed: int = 0) -> Path:
    started = time.perf_counter()
    pipe = build_tiny_pipeline(seed)
    base_unet = copy.deepcopy(pipe.unet)  # untouched reference for the reload check
    denoiser = tiny_denoiser(pipe)
    images = [(img + 1) / 2 for img in sample_images(4, 32, seed)]
    prompt = f"a photo of {TRIGGER} toy"
    examples = prepare_examples(denoiser, images, [prompt] * len(images), resolution=32, bucket_step=16)
    print(f"tiny pipeline: UNet {sum(p.numel() for p in pipe.unet.parameters()):,} params, "
          f"{len(images)} sample images → latents {tuple(examples[0].latent.shape)}")

    config = TrainConfig(steps=steps, a1=DEMO_A1, a2=DEMO_A2, seed=seed, lr=3e-3)
    progress = ProgressPrinter(steps, "training KronA")
    result = train(denoiser, examples, config, on_step=progress.update)
    progress.close()
    handle = result.handles[0]
    print(f"KronA ({DEMO_A1}, {DEMO_A2}) on {len(handle.paths())} attention layers: {handle.num_parameters():,} "
          f"trainable parameters; loss (mean of 10 steps) {sum(result.losses[:10]) / 10:.4f} → "
          f"{sum(result.losses[-10:]) / 10:.4f}")

    path = unique_path(Path(out_dir), "krona-demo")
    handle.save(path, trigger_words=[TRIGGER], training=result.record)
    print(f"saved {path} ({path.stat().st_size:,} bytes)")

    file = load(path)
    generator = torch.Generator().manual_seed(seed + 1)
    latents = torch.stack([e.latent for e in examples])
    probe_t = torch.full((len(latents),), 500)
    probe = denoiser.alphas_cumprod[500].sqrt() * latents + (1 - denoiser.alphas_cumprod[500]).sqrt() * torch.randn(latents.shape, generator=generator)
    with torch.no_grad():
        cond = denoiser.encode_prompts([prompt] * len(latents), [e.size for e in examples])
        trained = pipe.unet(probe, probe_t, cond["encoder_hidden_states"]).sample
        reloaded = apply(base_unet, file)
        efficient = base_unet(probe, probe_t, cond["encoder_hidden_states"]).sample
        reloaded.merge()
        merged = base_unet(probe, probe_t, cond["encoder_hidden_states"]).sample
        reloaded.remove()
        plain = base_unet(probe, probe_t, cond["encoder_hidden_states"]).sample
    scale = trained.abs().max().item()
    err_merge = (efficient - merged).abs().max().item() / scale
    err_file = (efficient - trained).abs().max().item() / scale
    effect = (trained - plain).abs().max().item() / scale
    print(f"reloaded file: {len(file.modules)} modules, trigger words {file.trigger_words}")
    print(f"efficient vs merged forward: max rel. difference {err_merge:.2e}")
    print(f"reloaded (fp16 file) vs trained in memory: {err_file:.2e}; adapter effect vs base: {effect:.2e}")
    if err_merge > 1e-4 or err_file > 1e-2 or effect <= err_file:
        raise SystemExit("demo check failed: efficient/merged/reloaded outputs disagree")

    print("\ntrainable parameters on the real architectures (attention q/k/v/out, meta device):")
    print(format_table([unet_counts(b) for b in ("sd1", "sd2", "sdxl")], 64, 8, 4))
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s; inspect the file with "
          f"`python -m krona_core info {path}`")
    return path

"""`python -m krona_core demo`: the whole loop on the embedded tiny default, no downloads.

train (the real trainer, progress bar with loss) → save .krona.safetensors → reload + validate →
apply to a fresh copy of the base → check efficient == merged == trained → parameter table on
the real SD1.5 / SD2.1 / SDXL shapes.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import torch

from ..adapters.apply import apply, load
from ..adapters.counts import format_table, unet_counts
from ..tiny.pipeline import build_tiny_pipeline, sample_images
from ..tiny.teacher import tiny_denoiser
from ..train.config import TrainConfig
from ..train.job import JobEvents, JobSpec, run_job
from ..util.progress import ProgressPrinter, unique_path

DEMO_A1, DEMO_A2 = 8, 4  # the tiny UNet is 32–64 wide; (64, 8) would fall back to a full-size w1
TRIGGER = "sks"
PROMPT = f"a photo of {TRIGGER} toy"


def run_demo(out_dir: str | os.PathLike = "demo_out", steps: int = 60, seed: int = 0) -> Path:
    started = time.perf_counter()
    pipe = build_tiny_pipeline(seed)
    base_unet = copy.deepcopy(pipe.unet)  # untouched reference for the reload check
    denoiser = tiny_denoiser(pipe)
    images = [(img + 1) / 2 for img in sample_images(4, 32, seed)]
    path = unique_path(Path(out_dir), "krona-demo")
    progress = ProgressPrinter(steps, "training KronA")
    spec = JobSpec(images=images, instance_prompt=PROMPT, config=TrainConfig(steps=steps, a1=DEMO_A1, a2=DEMO_A2, seed=seed, lr=3e-3),
                   resolution=32, bucket_step=16, trigger_words=TRIGGER, title=path.name.split(".")[0], out=str(path))
    job = run_job(denoiser, spec, JobEvents(on_step=lambda done, total, loss, lr: progress.update(done, loss)))
    progress.close()
    handle, losses = job.train.handles[0], job.train.losses
    print(f"tiny pipeline: UNet {sum(p.numel() for p in pipe.unet.parameters()):,} params, "
          f"{len(images)} sample images → latents {tuple(job.examples[0].latent.shape)}")
    print(f"KronA ({DEMO_A1}, {DEMO_A2}) on {len(handle.paths())} attention layers: {handle.num_parameters():,} "
          f"trainable parameters; loss (mean of 10 steps) {sum(losses[:10]) / 10:.4f} → {sum(losses[-10:]) / 10:.4f}")
    print(f"saved {path} ({path.stat().st_size:,} bytes), loss curve {job.curve_path}")
    _check_reload(path, pipe, base_unet, denoiser, job.examples, seed)
    print("\ntrainable parameters on the real architectures (attention q/k/v/out, meta device):")
    print(format_table([unet_counts(b) for b in ("sd1", "sd2", "sdxl")], 64, 8, 4))
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s; inspect the file with "
          f"`{_python()} -m krona_core info {path}`" + _activate_hint(path))
    return path


def _python() -> str:
    """This interpreter as a command that works from the current folder (`.venv/bin/python` under make)."""
    relative = os.path.relpath(sys.executable)
    return relative if not relative.startswith("..") else sys.executable


def _activate_hint(path: Path) -> str:
    venv = os.path.relpath(sys.prefix)
    if sys.prefix == sys.base_prefix or venv.startswith(".."):
        return ""
    return f" (or `krona info {path}` after `source {venv}/bin/activate`)"


def _check_reload(path: Path, pipe, base_unet: torch.nn.Module, denoiser, examples, seed: int) -> None:
    """The saved file, applied to a fresh copy of the base, equals the trained model (efficient and
    merged), and differs from the base."""
    file = load(path)
    latents = torch.stack([e.latent for e in examples])
    generator = torch.Generator().manual_seed(seed + 1)
    probe_t = torch.full((len(latents),), 500)
    ab = denoiser.alphas_cumprod[500]
    probe = ab.sqrt() * latents + (1 - ab).sqrt() * torch.randn(latents.shape, generator=generator)
    with torch.no_grad():
        states = denoiser.encode_prompts([PROMPT] * len(latents), [e.size for e in examples])["encoder_hidden_states"]
        trained = pipe.unet(probe, probe_t, states).sample
        reloaded = apply(base_unet, file)
        efficient = base_unet(probe, probe_t, states).sample
        reloaded.merge()
        merged = base_unet(probe, probe_t, states).sample
        reloaded.remove()
        plain = base_unet(probe, probe_t, states).sample
    scale = trained.abs().max().item()
    err_merge = (efficient - merged).abs().max().item() / scale
    err_file = (efficient - trained).abs().max().item() / scale
    effect = (trained - plain).abs().max().item() / scale
    print(f"reloaded file: {len(file.modules)} modules, trigger words {file.trigger_words}")
    print(f"efficient vs merged forward: max rel. difference {err_merge:.2e}")
    print(f"reloaded (fp16 file) vs trained in memory: {err_file:.2e}; adapter effect vs base: {effect:.2e}")
    if err_merge > 1e-4 or err_file > 1e-2 or effect <= err_file:
        raise SystemExit("demo check failed: efficient/merged/reloaded outputs disagree")

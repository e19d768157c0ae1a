"""`python -m krona_core demo`: the whole loop on the embedded world base, no downloads.

The shipped world base (a tiny SD1-shaped model pretrained on procedural scenes) learns the
personalisation task's emblem: train (the real job, prior preservation, progress bar with loss) →
save .krona.safetensors → before/after grid and metrics (subject fidelity, prompt fidelity, prior
preservation, base vs adapted, same seeds) → reload + validate → apply to a fresh copy of the base
→ check efficient == merged == trained → parameter table on the real SD1.5 / SD2.1 / SDXL shapes.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

from ..adapters.apply import apply, load
from ..adapters.counts import format_table, unet_counts
from ..eval.generate import generate
from ..eval.world_metrics import LATENT, SubjectScores, subject_scores
from ..train.job import JobEvents, run_job
from ..util.grid import image_grid
from ..util.plot import save_png
from ..util.progress import ProgressPrinter, unique_path
from ..world import model as world_model
from ..world import task
from ..world.personalise import RECIPE, instance_images, job_spec

PROMPT = f"a {task.TRIGGER} circle"


def run_demo(out_dir: str | os.PathLike = "demo_out", steps: int | None = None, seed: int = 0) -> Path:
    """Run the demo; steps None → the task recipe's. At one torch thread: the world's ops are so small
    that a second thread only adds overhead, and on a busy machine a lot of it (at two threads beside two
    one-thread jobs on 2 cores the demo took 473 s; alone at one thread it takes 54 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(out_dir, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _run_demo(out_dir: str | os.PathLike, steps: int | None, seed: int) -> Path:
    steps = steps or RECIPE.steps
    started = time.perf_counter()
    base, recipe = world_model.load()
    denoiser = base.denoiser()
    base_unet = copy.deepcopy(base.unet)  # untouched reference for the reload check
    prompts = [p.prompt() for p in task.eval_placements()]
    before_images = generate(denoiser, prompts, LATENT, seed)
    before = subject_scores(denoiser, seed=seed)
    path = unique_path(Path(out_dir), "krona-demo")
    config = dataclasses.replace(RECIPE, steps=steps, seed=seed)
    progress = ProgressPrinter(steps, "training KronA")
    job = run_job(denoiser, job_spec(config, str(path), path.name.split(".")[0]),
                  JobEvents(on_step=lambda done, total, loss, lr: progress.update(done, loss)))
    progress.close()
    handle, losses = job.train.handles[0], job.train.losses
    print(f"world base ({recipe.get('unet_steps_done', '?')} pretraining steps): UNet "
          f"{sum(p.numel() for p in base.unet.parameters()):,} params; {len(job.examples)} images of the emblem "
          f"→ latents {tuple(job.examples[0].latent.shape)}")
    print(f"KronA ({config.a1}, {config.a2}) on {len(handle.paths())} attention layers: {handle.num_parameters():,} "
          f"trainable parameters; loss (mean of 10 steps) {sum(losses[:10]) / 10:.4f} → {sum(losses[-10:]) / 10:.4f}")
    print(f"saved {path} ({path.stat().st_size:,} bytes), loss curve {job.curve_path}")
    after_images = generate(denoiser, prompts, LATENT, seed)
    after = subject_scores(denoiser, seed=seed)
    grid = path.with_name(path.name.replace(".krona.safetensors", ".grid.png"))
    references = instance_images()[0]
    save_png(image_grid([("subject", torch.stack(references).numpy()), ("base", before_images), ("KronA", after_images)]),
             str(grid))
    print(f"before/after grid {grid} (columns: {'; '.join(prompts)})")
    print(format_scores(before, after))
    _check_reload(path, base.unet, base_unet, denoiser, job.examples, seed)
    job.remove_adapters()
    print("\ntrainable parameters on the real architectures (attention q/k/v/out, meta device):")
    print(format_table([unet_counts(b) for b in ("sd1", "sd2", "sdxl")], 64, 8, 4))
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s; inspect the file with "
          f"`{_python()} -m krona_core info {path}`" + _activate_hint(path))
    return path


def format_scores(before: SubjectScores, after: SubjectScores) -> str:
    rows = ["metric                 base  → KronA"]
    for key, value in before.as_dict().items():
        rows.append(f"{key:<20} {value:7.3f} → {after.as_dict()[key]:7.3f}")
    return "\n".join(rows)


def _python() -> str:
    """This interpreter as a command that works from the current folder (`.venv/bin/python` under make)."""
    relative = os.path.relpath(sys.executable)
    return relative if not relative.startswith("..") else sys.executable


def _activate_hint(path: Path) -> str:
    venv = os.path.relpath(sys.prefix)
    if sys.prefix == sys.base_prefix or venv.startswith(".."):
        return ""
    return f" (or `krona info {path}` after `source {venv}/bin/activate`)"


def _check_reload(path: Path, trained_unet: torch.nn.Module, base_unet: torch.nn.Module, denoiser, examples,
                  seed: int) -> None:
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
        trained = trained_unet(probe, probe_t, states).sample
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

"""What the KronA tab and API do, written against krona_core; the web UI supplies only paths,
the loaded checkpoint's file and a cancel flag."""

from __future__ import annotations

import glob
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from krona_core.format import SUFFIX

from .networks import krona_dir, krona_files

# tokenizer folders the web UIs ship (Forge) or cache (A1111), per base
TOKENIZER_CANDIDATES = {
    "sd1": ["backend/huggingface/runwayml/stable-diffusion-v1-5/tokenizer",
            "~/.cache/huggingface/hub/models--openai--clip-vit-large-patch14/snapshots/*"],
    "sd2": ["backend/huggingface/stabilityai/stable-diffusion-2-1/tokenizer"],
    "sdxl": ["backend/huggingface/stabilityai/stable-diffusion-xl-base-1.0/tokenizer",
             "~/.cache/huggingface/hub/models--openai--clip-vit-large-patch14/snapshots/*"],
}


@dataclass
class TrainRequest:
    images_dir: str
    instance_prompt: str
    name: str = "krona"
    steps: int = 500
    learning_rate: float = 1e-3
    a1: int = 64
    a2: int = 8
    targets: str = "attn"
    seed: int = 0
    resolution: int = 512
    grad_accum: int = 4
    batch_size: int = 1
    schedule: str = "constant"
    class_prompt: str = ""
    num_class_images: int = 0
    train_text_encoder: bool = False
    trigger_words: str = ""
    tokenizer_dir: str = ""
    checkpoint_every: int = 0


@dataclass
class Job:
    """One training run: the cancel flag and the live loss, shared with the UI/API."""

    cancel: threading.Event = field(default_factory=threading.Event)
    losses: list[float] = field(default_factory=list)
    total: int = 0
    status: str = "idle"


CURRENT = Job()


def checkpoint_file() -> tuple[str, str]:
    """(path, base) of the checkpoint the web UI has loaded."""
    from modules import shared

    from krona_core.train_diffusers import detect_checkpoint_base

    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    path = getattr(info, "filename", None)
    if not path or not os.path.isfile(path):
        raise ValueError("no checkpoint file is loaded in the web UI")
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: KronA trains on .safetensors checkpoints only (never unpickles)")
    from safetensors import safe_open

    with safe_open(path, "pt") as fh:
        shapes = {k: () for k in fh.keys()}
    return path, detect_checkpoint_base(shapes)


def find_tokenizer(base: str, explicit: str = "") -> str:
    if explicit:
        return explicit
    from modules import paths

    for pattern in TOKENIZER_CANDIDATES.get(base, []):
        expanded = os.path.expanduser(pattern if pattern.startswith("~") else os.path.join(paths.script_path, pattern))
        for candidate in sorted(glob.glob(expanded)):
            if os.path.isfile(os.path.join(candidate, "vocab.json")) and os.path.isfile(os.path.join(candidate, "merges.txt")):
                return candidate
    raise ValueError("no CLIP tokenizer folder found in the web UI's tree; give one (a folder with vocab.json and merges.txt)")


def output_path(name: str) -> Path:
    from krona_core.progress import unique_path

    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "krona"
    return unique_path(Path(krona_dir()), clean, SUFFIX)


def train(request: TrainRequest, on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train on the web UI's loaded checkpoint with krona_core's trainer; write models/krona/NAME_NNNNN."""
    from modules import devices

    from krona_core.format import save
    from krona_core.images import load_folder
    from krona_core.plot import loss_curve, save_png
    from krona_core.train import TrainConfig, TrainingInterrupted, generate_class_examples, prepare_examples
    from krona_core.train import train as run
    from krona_core.train_diffusers import load_single_file

    job = CURRENT
    job.cancel.clear()
    job.losses = []
    job.total = request.steps
    job.status = "loading"
    path, base = checkpoint_file()
    denoiser = load_single_file(path, find_tokenizer(base, request.tokenizer_dir), device=str(devices.device))
    loaded = load_folder(request.images_dir)
    prompts = [caption or request.instance_prompt for _, _, caption in loaded]
    examples = prepare_examples(denoiser, [img for _, img, _ in loaded], prompts, request.resolution)
    classes = []
    if request.class_prompt and request.num_class_images:
        classes = generate_class_examples(denoiser, request.class_prompt, request.num_class_images,
                                          tuple(examples[0].latent.shape), request.seed + 10_000)
    out = output_path(request.name)
    config = TrainConfig(steps=request.steps, lr=request.learning_rate, a1=request.a1, a2=request.a2,
                         targets=request.targets, seed=request.seed, grad_accum=request.grad_accum,
                         batch_size=request.batch_size, schedule=request.schedule,
                         train_text_encoder=request.train_text_encoder, checkpoint_every=request.checkpoint_every,
                         checkpoint_dir=str(out.with_name(out.name[: -len(SUFFIX)] + ".checkpoints")))

    def step(done: int, loss: float, lr: float) -> None:
        job.losses.append(loss)
        job.status = f"step {done}/{request.steps}, loss {loss:.4f}"
        if on_step:
            on_step(done, loss)

    job.status = "training"
    try:
        result = run(denoiser, examples, config, class_examples=classes, on_step=step, should_stop=job.cancel.is_set)
    except TrainingInterrupted as exc:
        job.status = str(exc)
        return {"cancelled": True, "checkpoint": exc.checkpoint, "losses": job.losses}
    words = [w.strip() for w in (request.trigger_words or request.instance_prompt).split(",") if w.strip()]
    save(out, result.handles, trigger_words=words, training={**result.record, "host": "webui", "base_file": os.path.basename(path)})
    curve = save_png(loss_curve(result.losses, title=f"{out.name}: loss per step"), str(out)[: -len(SUFFIX)] + ".loss.png")
    job.status = f"saved {out.name}"
    name = os.path.splitext(out.name)[0]
    return {"cancelled": False, "path": str(out), "name": name, "tag": f"<krona:{name[: -len('.krona')]}:1>",
            "losses": result.losses, "loss_curve": curve}


def inspect(name: str) -> str:
    from krona_core.describe import describe
    from krona_core.format import read

    path = krona_files().get(name)
    if path is None:
        raise ValueError(f"no KronA file named {name!r} in models/krona or the Lora folder")
    return describe(read(path))


def convert(src: str, dst: str, to: str = "", a1: int = 64, a2: int = 8, budget: int = 0, rank: int = 0) -> str:
    """The CLI converter (krona_core.cli_convert), for the tab."""
    import argparse
    import contextlib
    import io

    from krona_core.cli_convert import run_convert

    if dst and not os.path.isabs(dst):
        dst = os.path.join(krona_dir(), dst)
    args = argparse.Namespace(src=src, dst=dst, to=to or None, a1=a1, a2=a2, budget=budget or None, rank=rank or None,
                              base=None, float32=False)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        run_convert(args)
    return buffer.getvalue()

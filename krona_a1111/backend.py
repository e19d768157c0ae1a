"""What the KronA tab and API do, written against krona_core; the web UI supplies only paths,
the loaded checkpoint's file and a cancel flag. One training job runs at a time."""

from __future__ import annotations

import glob
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from krona_core.files.model import SUFFIX

from .networks import krona_dir, krona_files, lora_dir
from .requests import ConvertRequest, TrainRequest

# tokenizer folders the web UIs ship (Forge) or cache (A1111), per base
TOKENIZER_CANDIDATES = {
    "sd1": ["backend/huggingface/runwayml/stable-diffusion-v1-5/tokenizer",
            "~/.cache/huggingface/hub/models--openai--clip-vit-large-patch14/snapshots/*"],
    "sd2": ["backend/huggingface/stabilityai/stable-diffusion-2-1/tokenizer"],
    "sdxl": ["backend/huggingface/stabilityai/stable-diffusion-xl-base-1.0/tokenizer",
             "~/.cache/huggingface/hub/models--openai--clip-vit-large-patch14/snapshots/*"],
}


class JobBusy(RuntimeError):
    """A training job is already running (the web UI trains one at a time)."""


@dataclass
class Job:
    """The training run: the cancel flag and the live loss, shared with the UI/API."""

    cancel: threading.Event = field(default_factory=threading.Event)
    losses: list[float] = field(default_factory=list)
    total: int = 0
    status: str = "idle"
    lock: threading.Lock = field(default_factory=threading.Lock)


CURRENT = Job()


def checkpoint_file() -> tuple[str, str]:
    """(path, base) of the checkpoint the web UI has loaded."""
    from modules import shared

    from krona_core import families

    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    path = getattr(info, "filename", None)
    if not path or not os.path.isfile(path):
        raise ValueError("no checkpoint file is loaded in the web UI")
    if not path.endswith(".safetensors"):
        raise ValueError(f"{path}: KronA trains on .safetensors checkpoints only (never unpickles)")
    from safetensors import safe_open

    with safe_open(path, "pt") as fh:
        family = families.detect({k: () for k in fh.keys()})  # single-file key markers suffice
    if family is None:
        raise ValueError(f"{path}: not a checkpoint of a model family KronA trains ({', '.join(families.names())})")
    return path, family.name


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
    from krona_core.util.progress import unique_path

    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "krona"
    return unique_path(Path(krona_dir()), clean, SUFFIX)


def train(request: TrainRequest, on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train on the web UI's loaded checkpoint with krona_core's job; write models/krona/NAME_NNNNN.

    Raises JobBusy while another job runs; a failure leaves the status at "failed: <reason>"."""
    from krona_core.train.config import TrainingInterrupted

    job = CURRENT
    if not job.lock.acquire(blocking=False):
        raise JobBusy("a KronA training job is already running: wait for it or cancel it")
    try:
        job.cancel.clear()
        job.losses = []
        job.total = request.steps
        job.status = "loading"
        return _train(request, on_step)
    except TrainingInterrupted as exc:
        job.status = str(exc)
        return {"cancelled": True, "checkpoint": exc.checkpoint, "losses": job.losses}
    except Exception as exc:
        job.status = f"failed: {exc}"
        raise
    finally:
        job.lock.release()


def _train(request: TrainRequest, on_step: Callable[[int, float], None] | None) -> dict:
    from modules import devices

    from krona_core.train.config import TrainConfig
    from krona_core.train.diffusers_backend import load_single_file
    from krona_core.train.job import JobEvents, JobSpec, run_job
    from krona_core.train.dataset import load_dataset

    job = CURRENT
    path, base = checkpoint_file()
    loaded = load_dataset(request.images_dir)  # kohya repeat folders and caption files too
    out = output_path(request.name)
    config = TrainConfig(steps=request.steps or None, lr=request.learning_rate, a1=request.a1, a2=request.a2,
                         targets=request.targets, seed=request.seed, grad_accum=request.grad_accum,
                         batch_size=request.batch_size, schedule=request.schedule,
                         train_text_encoder=request.train_text_encoder, checkpoint_every=request.checkpoint_every,
                         checkpoint_dir=str(out.with_name(out.name[: -len(SUFFIX)] + ".checkpoints")))
    spec = JobSpec(images=[i.image for i in loaded], captions=[i.caption for i in loaded], repeats=[i.repeats for i in loaded],
                   instance_prompt=request.instance_prompt, config=config, resolution=request.resolution or None,
                   class_prompt=request.class_prompt, num_class_images=request.num_class_images,
                   class_dir=str(out.parent / "class_images"),
                   trigger_words=request.trigger_words or None, title=out.name[: -len(SUFFIX)],
                   record={"host": "webui", "base_file": os.path.basename(path)}, out=str(out))
    spec.validate()  # before the checkpoint is loaded
    denoiser = load_single_file(path, find_tokenizer(base, request.tokenizer_dir), device=str(devices.device))

    def step(done: int, total: int, loss: float, lr: float) -> None:
        job.losses.append(loss)
        job.total = total
        job.status = f"step {done}/{total}, loss {loss:.4f}"
        if on_step:
            on_step(done, loss)

    def progress(phase: str, done: int, total: int) -> None:
        if phase in ("class images", "preview") and total:
            job.status = f"{'sampling a preview' if phase == 'preview' else phase} {done}/{total}"

    job.status = "training"
    result = run_job(denoiser, spec, JobEvents(on_step=step, on_progress=progress, should_stop=job.cancel.is_set))
    result.remove_adapters()
    job.status = f"saved {out.name}"
    name = os.path.splitext(out.name)[0]
    return {"cancelled": False, "path": result.path, "name": name, "tag": f"<krona:{name[: -len('.krona')]}:1>",
            "losses": result.train.losses, "loss_curve": result.curve_path}


def inspect(name: str) -> str:
    from krona_core.files.describe import describe
    from krona_core.files.reader import read

    path = krona_files().get(name)
    if path is None:
        raise ValueError(f"no KronA file named {name!r} in models/krona or the Lora folder")
    return describe(read(path))


def convert(request: ConvertRequest) -> str:
    """krona_core's converter for the tab and the API: `src` is a file listed in models/krona or the
    Lora folder, `dst` a new name inside models/krona (its folder must exist); a `dst` that leaves
    models/krona, after symlinks, is refused."""
    from krona_core.convert.convert import convert_file
    from krona_core.files.paths import resolve_inside

    src = _source_path(request.src)
    dst = resolve_inside(krona_dir(), request.dst, (".safetensors",), "output")  # its folder must exist
    return convert_file(src, dst, request.to or None, request.a1, request.a2, request.budget or None,
                        request.rank or None).text


def _source_path(name: str) -> str:
    from krona_core.files.paths import listed_path

    for root in (krona_dir(), lora_dir()):
        path = listed_path(root, name)
        if path is not None:
            return path
    raise ValueError(f"{name!r}: no such .safetensors file in models/krona or the Lora folder (give its name there)")

"""One training job: what the CLI, ComfyUI's Train KronA node and the web UI's KronA tab all run.

A host reads its own inputs (arguments, widgets, an API request) into a `JobSpec`, hands over a
`Denoiser` over its models, and shows the `JobEvents` it receives (a progress bar, a live loss
chart, previews); everything else happens here, once: examples from the images and captions, the
family's defaults (steps, resolution), prior-preservation class images, training, the trigger
words, the file with its training record, the loss curve, checkpoints and previews on disk.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..files.model import SUFFIX, KronAFile, split_trigger_words
from ..files.writer import from_handles, write
from ..util.images import load_image, to_uint8
from ..util.plot import loss_curve, save_png
from .config import TrainConfig
from ..families import recipe
from .class_images import ClassImageKey, base_fingerprint, cached_class_images
from .data import CROPS, Example, examples_from_latents, prepare_examples
from .denoiser import Cond, Denoiser
from .distributed import Processes
from .loop import TrainResult, train
from .sampling import generate_class_examples


class JobError(ValueError):
    """A job that cannot start as specified (checked before any model is touched)."""


CLASS_SEED_OFFSET = 10_000  # class images are drawn from their own seeds, away from the training noise
CLASS_SAMPLER_STEPS = 20  # DDIM steps per generated class image


@dataclass
class JobSpec:
    """What to train. Sizes and counts the family decides when left as None."""

    images: Sequence[torch.Tensor]  # instance images, (3, H, W) in [0, 1]; or none, with latents
    instance_prompt: str
    config: TrainConfig = field(default_factory=TrainConfig)
    captions: Sequence[str | None] = ()  # per image; None (or missing) → the instance prompt
    repeats: Sequence[int] = ()  # per image, times seen per epoch (kohya repeat folders); missing → 1
    resolution: int | None = None  # bucket side in pixels; None → the family's default
    crop: str | None = None  # "random" or "center"; None → the family's default
    class_prompt: str = ""
    class_images: Sequence[torch.Tensor] = ()  # supplied class images; else num_class_images are generated
    num_class_images: int = 0
    class_dir: str | None = None  # generated class images are saved here and reused; None → kept in memory
    trigger_words: str | Sequence[str] | None = None  # None → the instance prompt
    title: str = "krona"
    record: Mapping[str, Any] = field(default_factory=dict)  # host facts for the training record
    resume_from: str | None = None
    out: str | None = None  # write the adapter here, with NAME.loss.png and NAME.preview_NNNNNN.png
    overwrite: bool = False
    float32: bool = False
    bucket_step: int = 64  # side granularity of aspect buckets (64 px = 8 latent pixels for SD VAEs)
    latents: Sequence[torch.Tensor] = ()  # instead of images: (C, h, w) latents in the model's space …
    conds: Sequence[Cond] = ()  # … with their conditioning (one for all, or one per latent), e.g. of any text encoder

    def validate(self) -> None:
        """Everything that can be checked before a model is touched (raises JobError)."""
        problems = []
        if bool(self.images) == bool(self.latents):
            problems.append("give instance images or latents with conditioning (one of the two)" if self.images
                            else "no instance images (or latents with conditioning)")
        if self.latents and len(self.conds) not in (1, len(self.latents)):
            problems.append(f"{len(self.conds)} conditionings for {len(self.latents)} latents (one for all, or one each)")
        if self.captions and len(self.captions) != len(self.images):
            problems.append(f"{len(self.captions)} captions for {len(self.images)} images (one per image)")
        if self.repeats and (len(self.repeats) != len(self.images) or min(self.repeats) < 1):
            problems.append(f"repeats must be one count ≥ 1 per image ({len(self.repeats)} for {len(self.images)} images)")
        if self.crop is not None and self.crop not in CROPS:
            problems.append(f"crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.class_prompt.strip() and not self.class_images and self.num_class_images < 1:
            problems.append("a class prompt needs class images or a number of class images to generate")
        if self.out is not None and not self.out.endswith(SUFFIX):
            problems.append(f"{self.out}: the output name must end with {SUFFIX}")
        elif self.out is not None and os.path.exists(self.out) and not self.overwrite:
            problems.append(f"{self.out} exists; choose another name or allow overwriting")
        elif self.out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(self.out))):
            problems.append(f"{self.out}: its folder does not exist")
        elif self.out is not None and not os.access(os.path.dirname(os.path.abspath(self.out)), os.W_OK):
            problems.append(f"{self.out}: its folder is not writable")
        if self.resume_from is not None and not os.path.isfile(self.resume_from):
            problems.append(f"{self.resume_from}: no such checkpoint to resume from")
        try:
            self.config.validate(resolved=False)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise JobError("; ".join(problems))


@dataclass
class JobEvents:
    """What a host hears of a job (every callback optional)."""

    on_step: Callable[[int, int, float, float], None] | None = None  # (done, total, loss, lr)
    on_progress: Callable[[str, int, int], None] | None = None  # (phase, done, total) of non-training work
    on_preview: Callable[[int, torch.Tensor], None] | None = None  # (step, image (3, H, W) in [0, 1])
    should_stop: Callable[[], bool] | None = None  # polled at step and image boundaries: cancel

    def progress(self, phase: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(phase, done, total)


@dataclass
class JobResult:
    file: KronAFile  # in memory: factors (float32) and all metadata
    train: TrainResult  # handles still attached, losses, previews, checkpoints, record
    examples: list[Example]  # the instance examples as trained on (latents on the CPU)
    curve: np.ndarray  # the loss curve (H, W, 3) uint8, checkpoints marked
    defaults: dict[str, Any] = field(default_factory=dict)  # settings taken from the family's recipe (left unset)
    path: str | None = None  # the written adapter (spec.out)
    curve_path: str | None = None
    preview_paths: list[str] = field(default_factory=list)

    def remove_adapters(self) -> None:
        for handle in self.train.handles:
            handle.remove()


def run_job(denoiser: Denoiser, spec: JobSpec, events: JobEvents | None = None,
            processes: Processes | None = None) -> JobResult:
    """Train as `spec` says and return the result; writes files only when `spec.out` is set
    (and only on the main process). Cancel raises TrainingInterrupted (a checkpoint is kept when
    the config has a checkpoint_dir); a diverged loss raises TrainingDiverged."""
    spec.validate()
    events = events or JobEvents()
    config, resolution, crop, defaults = resolve_defaults(spec, getattr(denoiser, "family", None))
    main = processes is None or processes.is_main
    encoded = _instance_examples(denoiser, spec, config, resolution, crop, events)
    examples = [ex for ex, n in zip(encoded, spec.repeats or [1] * len(encoded)) for _ in range(n)]
    class_examples = _class_examples(denoiser, spec, config, examples, resolution, events)
    stem = spec.out[: -len(SUFFIX)] if spec.out else None
    preview_paths: list[str] = []

    def on_preview(step: int, image: torch.Tensor) -> None:
        if stem is not None and main:
            preview_paths.append(save_png(to_uint8(image), f"{stem}.preview_{step:06d}.png"))
        if events.on_preview is not None:
            events.on_preview(step, image)

    def on_step(done: int, loss: float, lr: float) -> None:
        if events.on_step is not None:
            events.on_step(done, config.steps, loss, lr)

    result = train(denoiser, examples, config, class_examples=class_examples, resume_from=spec.resume_from,
                   on_step=on_step, should_stop=events.should_stop, on_preview=on_preview,
                   on_preview_progress=lambda d, t: events.progress("preview", d, t),
                   reduce_gradients=processes.reduce_gradients if processes else None,
                   rank=processes.rank if processes else 0)
    if processes is not None:
        processes.check_in_sync(p for h in result.handles for p in h.parameters())
        result.record["world_size"] = processes.world_size
    job = _finish(spec, result, examples, stem if main else None, preview_paths)
    job.defaults = defaults
    return job


def _instance_examples(denoiser: Denoiser, spec: JobSpec, config: TrainConfig, resolution: int, crop: str,
                       events: JobEvents) -> list[Example]:
    """The instance examples: images bucketed and encoded once, or the given latents with their
    conditioning (size info at the VAE's 8× scale)."""
    if spec.latents:
        conds = list(spec.conds) * len(spec.latents) if len(spec.conds) == 1 else list(spec.conds)
        return examples_from_latents(torch.stack([lat.float().cpu() for lat in spec.latents]),
                                     [spec.instance_prompt] * len(spec.latents), conds=conds)
    events.progress("encoding images", 0, len(spec.images))
    prompts = [c or spec.instance_prompt for c in spec.captions] or [spec.instance_prompt] * len(spec.images)
    encoded = prepare_examples(denoiser, list(spec.images), prompts, resolution, bucket_step=spec.bucket_step,
                               crop=crop, seed=config.seed)
    events.progress("encoding images", len(spec.images), len(spec.images))
    return encoded


def resolve_defaults(spec: JobSpec, family) -> tuple[TrainConfig, int, str, dict[str, Any]]:
    """The config, resolution and crop the job runs with, the family's recipe filling what `spec`
    leaves unset, and {setting: value} of those it filled (hosts show them)."""
    plan = recipe(family)
    defaults: dict[str, Any] = {}
    if spec.config.steps is None:
        defaults["steps"] = plan.steps
    if spec.resolution is None:
        defaults["resolution"] = plan.resolution
    if spec.crop is None:
        defaults["crop"] = plan.crop
    config = spec.config.resolved(family)
    if config.validate_every and not config.validation_prompt:
        config = dataclasses.replace(config, validation_prompt=spec.instance_prompt)  # previews show the subject
    if defaults:
        defaults["recipe"] = family.title if family is not None else "generic (base of no known family)"
    return config, spec.resolution or plan.resolution, spec.crop or plan.crop, defaults


def describe_defaults(defaults: Mapping[str, Any]) -> str:
    """One line naming the settings a job took from the family's recipe ("" when none)."""
    parts = [f"{defaults['steps']} steps" if "steps" in defaults else "",
             f"{defaults['resolution']} px" if "resolution" in defaults else "",
             f"{defaults['crop']} crop" if "crop" in defaults else ""]
    parts = [p for p in parts if p]
    return f"defaults from the {defaults['recipe']} recipe: {', '.join(parts)}" if parts else ""


def _class_examples(denoiser: Denoiser, spec: JobSpec, config: TrainConfig, examples: Sequence[Example],
                    resolution: int, events: JobEvents) -> list[Example]:
    if not spec.class_prompt.strip():
        return []
    if spec.class_images:
        return prepare_examples(denoiser, list(spec.class_images), [spec.class_prompt] * len(spec.class_images),
                                resolution, is_class=True, bucket_step=spec.bucket_step)
    count, shape = spec.num_class_images, tuple(examples[0].latent.shape)
    seed = config.seed + CLASS_SEED_OFFSET
    progress = lambda d, t: events.progress("class images", d, t)  # noqa: E731
    progress(0, count)
    if spec.class_dir is None:
        return generate_class_examples(denoiser, spec.class_prompt, count, shape, seed, CLASS_SAMPLER_STEPS, progress,
                                       should_stop=events.should_stop)
    key = ClassImageKey(spec.class_prompt, base_fingerprint(denoiser), shape[0], shape[1] * 8, shape[2] * 8, seed,
                        CLASS_SAMPLER_STEPS)
    paths = cached_class_images(denoiser, spec.class_dir, key, count, progress, events.should_stop)
    return prepare_examples(denoiser, [load_image(p) for p in paths], [spec.class_prompt] * count, resolution,
                            is_class=True, bucket_step=spec.bucket_step)


def _finish(spec: JobSpec, result: TrainResult, examples: list[Example], stem: str | None,
            preview_paths: list[str]) -> JobResult:
    words = split_trigger_words(spec.trigger_words if spec.trigger_words is not None else spec.instance_prompt)
    used = sorted({tuple(w1.shape) for h in result.handles for w1, _ in h.factors().values()})
    training = {**result.record, "factors_used": [list(u) for u in used], **spec.record}  # a1/a2 as each layer allowed
    file = from_handles(result.handles, title=spec.title, trigger_words=words, training=training)
    curve = loss_curve(result.losses, title=f"{spec.title}: loss per step", markers=[s for s, _ in result.checkpoints])
    job = JobResult(file, result, examples, curve, preview_paths=preview_paths)
    if stem is not None:
        job.path = write(spec.out, file.modules, file.metadata, dtype=torch.float32 if spec.float32 else torch.float16,
                         overwrite=spec.overwrite)
        job.curve_path = save_png(curve, f"{stem}.loss.png")
    return job


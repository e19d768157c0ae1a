"""Training on the personalisation task, the same way for every method: KronA through the
project's job (what `make demo` runs) or any adapter handle through the trainer's loop (the
benchmark's LoRA / LoKr peers), on the same examples, prior-preservation images and recipe."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..train.config import TrainConfig
from ..train.data import Example, prepare_examples
from ..train.diffusers_backend import DiffusersDenoiser
from ..train.job import CLASS_SAMPLER_STEPS, CLASS_SEED_OFFSET, JobSpec
from ..train.loop import TrainResult, fit, train
from ..train.sampling import generate_class_examples
from . import task

# The paper's recipe (AdamW, constant lr, batch 1 × 4 accumulated, prior-preservation weight 1),
# scaled to the world: fewer steps, a higher rate, (4, 4) factors for 32–64-wide layers.
RECIPE = TrainConfig(steps=300, lr=1e-2, a1=4, a2=4, seed=0)
CLASS_IMAGES = 8
RESOLUTION, BUCKET = 32, 16


def instance_images(seed: int = 0) -> tuple[list[torch.Tensor], list[str]]:
    pixels, captions = task.training_set(seed)
    return [torch.from_numpy(p) for p in pixels], captions


def job_spec(config: TrainConfig = RECIPE, out: str | None = None, title: str = "krona") -> JobSpec:
    """The task as a training job (instance captions per image, class prompt, generated class images)."""
    images, captions = instance_images()
    return JobSpec(images=images, instance_prompt=f"a {task.TRIGGER} circle", captions=captions, config=config,
                   class_prompt=task.CLASS_PROMPT, num_class_images=CLASS_IMAGES, resolution=RESOLUTION,
                   bucket_step=BUCKET, crop="center", trigger_words=task.TRIGGER, title=title, out=out)


def task_examples(denoiser: DiffusersDenoiser, config: TrainConfig = RECIPE) -> tuple[list[Example], list[Example]]:
    """Instance and class examples exactly as the job builds them."""
    images, captions = instance_images()
    examples = prepare_examples(denoiser, images, captions, RESOLUTION, bucket_step=BUCKET, crop="center", seed=config.seed)
    shape = tuple(examples[0].latent.shape)
    classes = generate_class_examples(denoiser, task.CLASS_PROMPT, CLASS_IMAGES, shape, config.seed + CLASS_SEED_OFFSET,
                                      CLASS_SAMPLER_STEPS)
    return examples, classes


MakeHandles = Callable[[DiffusersDenoiser, TrainConfig], Sequence]


def train_method(denoiser: DiffusersDenoiser, config: TrainConfig = RECIPE, make_handles: MakeHandles | None = None,
                 data: tuple[list[Example], list[Example]] | None = None, **kwargs: Any) -> TrainResult:
    """KronA (make_handles None) or the handles `make_handles(denoiser, config)` attaches, trained
    with the trainer's loop on the task (keyword arguments are the loop's, e.g. on_step); the
    adapters stay attached."""
    examples, classes = data or task_examples(denoiser, config)
    if make_handles is None:
        return train(denoiser, examples, config, class_examples=classes, **kwargs)
    return fit(denoiser, make_handles(denoiser, config), examples, config, class_examples=classes, **kwargs)

"""Teacher–student quality measurement on the embedded tiny default (no real weights exist offline).

Base: the seeded tiny UNet. Teacher: base + a known KronA ΔW — the adapter that the default
recipe fits to a subject (procedural sample images) from another seed and another noise
stream. Student: trained from zero on the same images with the recipe under test. Measured:
the share of the base→teacher denoising-loss gap the student closes on held-out noise and
timesteps (training images and held-out images), and per layer how well the student's ΔW
reproduces the teacher's on the layer's real input activations.

Note what this does and does not show: the teacher is a KronA solution of the same task, so
the test measures whether training recovers a known-good adapter's quality and function from
a different start, not whether it can fit an arbitrary ΔW (a random ΔW does not make the teacher
the optimum of the denoising objective, so no trainer could be expected to recover it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..adapters.layers import KronANetwork
from ..train.config import TrainConfig
from ..train.data import Example, examples_from_latents
from ..train.diffusers_backend import DiffusersDenoiser, sd_alphas_cumprod
from ..train.loop import TrainResult, fit, train
from .pipeline import TinyPipeline, build_tiny_pipeline, sample_images

PROMPT = "a photo of sks toy"


def tiny_denoiser(pipe: TinyPipeline, unet: torch.nn.Module | None = None) -> DiffusersDenoiser:
    return DiffusersDenoiser(unet or pipe.unet, pipe.vae, [pipe.text_encoder], [pipe.tokenizer], sd_alphas_cumprod())


@dataclass
class Task:
    pipe: TinyPipeline
    base_state: dict[str, torch.Tensor]
    train_latents: torch.Tensor
    heldout_latents: torch.Tensor
    examples: list[Example]
    teacher_unet: torch.nn.Module
    teacher_handle: KronANetwork
    base_loss: dict[str, float] = field(default_factory=dict)
    teacher_loss: dict[str, float] = field(default_factory=dict)

    def fresh_student(self) -> DiffusersDenoiser:
        unet = copy.deepcopy(self.pipe.unet)
        unet.load_state_dict(self.base_state)
        return tiny_denoiser(self.pipe, unet)


def denoising_loss(denoiser: DiffusersDenoiser, latents: torch.Tensor, n: int = 256, seed: int = 99) -> float:
    """Mean ε-prediction error on fixed held-out (x0, ε, t) draws (common random numbers)."""
    g = torch.Generator().manual_seed(seed)
    ab = denoiser.alphas_cumprod
    x0 = latents[torch.randint(0, len(latents), (n,), generator=g)]
    eps = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, ab.numel(), (n,), generator=g)
    x_t = ab[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - ab[t]).sqrt().view(-1, 1, 1, 1) * eps
    size = examples_from_latents(latents[:1], [PROMPT], scale=2)[0].size
    with torch.no_grad():
        cond = denoiser.encode_prompts([PROMPT], [size])
        cond = {k: v.expand(n, *v.shape[1:]) for k, v in cond.items()}
        pred = denoiser.predict(x_t, t, cond)
    return float(((pred - eps) ** 2).mean())


def _losses(denoiser: DiffusersDenoiser, task_or_latents) -> dict[str, float]:
    train_latents, heldout = task_or_latents
    return {"train_images": denoising_loss(denoiser, train_latents), "heldout_images": denoising_loss(denoiser, heldout)}


def build_task(seed: int = 0, teacher_seed: int = 1, teacher_steps: int = 500, images: int = 8, heldout: int = 4) -> Task:
    """Build base, data and teacher (the default recipe from `teacher_seed`)."""
    pipe = build_tiny_pipeline(seed)
    base_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pixels = sample_images(images + heldout, 16, seed)
    base = tiny_denoiser(pipe)
    with torch.no_grad():
        latents = base.encode_images(pixels).cpu()
    train_latents, held = latents[:images], latents[images:]
    examples = examples_from_latents(train_latents, [PROMPT] * images, scale=2)
    base_loss = _losses(base, (train_latents, held))
    teacher_unet = copy.deepcopy(pipe.unet)
    teacher = tiny_denoiser(pipe, teacher_unet)
    result = train(teacher, examples, TrainConfig(steps=teacher_steps, seed=teacher_seed))
    teacher_loss = _losses(teacher, (train_latents, held))
    return Task(pipe, base_state, train_latents, held, examples, teacher_unet, result.handles[0], base_loss, teacher_loss)


def gap_closed(task: Task, student: DiffusersDenoiser) -> dict[str, float]:
    """(L_base − L_student) / (L_base − L_teacher) on training and held-out images."""
    student_loss = _losses(student, (task.train_latents, task.heldout_latents))
    return {k: (task.base_loss[k] - student_loss[k]) / (task.base_loss[k] - task.teacher_loss[k]) for k in student_loss}


def delta_recovery(task: Task, student_handle: KronANetwork, student: DiffusersDenoiser) -> dict[str, float]:
    """Per layer ‖(ΔW_student − ΔW_teacher) X‖ / ‖ΔW_teacher X‖ on the layer's training inputs X."""
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for path, _ in student_handle.items():
        module = student.unet.get_submodule(path)
        hooks.append(module.register_forward_hook(lambda m, a, o, p=path: inputs.setdefault(p, []).append(a[0].detach())))
    try:
        denoising_loss(student, task.train_latents, n=32, seed=7)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for path, adapter in student_handle.items():
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs[path]])
        d_student = adapter.delta_weight().detach() * adapter.strength
        teacher = task.teacher_handle.adapter(path)
        d_teacher = teacher.delta_weight().detach() * teacher.strength
        reference = (x @ d_teacher.T).norm()
        out[path] = float((x @ (d_student - d_teacher).T).norm() / reference) if reference > 0 else float("nan")
    return out


def run_student(task: Task, config: TrainConfig, make_handles: Callable[[DiffusersDenoiser, TrainConfig], list] | None = None
                ) -> tuple[TrainResult, DiffusersDenoiser]:
    """Train a fresh student with `config`: KronA by default, or the handles `make_handles(student,
    config)` attaches (the benchmarks' LoRA baselines), through the same loop."""
    student = task.fresh_student()
    if make_handles is None:
        return train(student, task.examples, config), student
    config = config.resolved(student.family)
    return fit(student, make_handles(student, config), task.examples, config), student

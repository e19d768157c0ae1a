"""Train KronA: DreamBooth-train a KronA adapter inside ComfyUI with krona_core's trainer."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import comfy.model_management
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..krona_core.adapters.targets import PRESETS
from ..krona_core.families.flow import DISTRIBUTIONS
from ..krona_core.train.config import TrainConfig, TrainingDiverged, TrainingInterrupted
from ..krona_core.train.data import CROPS
from ..krona_core.train.job import JobError, JobEvents, JobResult, JobSpec, describe_defaults, resolve_defaults, run_job
from . import folders
from .comfy_patch import apply_to
from .comfy_train import ComfyDenoiser
from .load_info import KRONA

log = logging.getLogger("ComfyUI-KronA")

TARGETS = list(PRESETS)
SCHEDULES = ["constant", "cosine", "linear"]
CROP_OPTIONS = ["auto", *CROPS]
PHASE_LABELS = {"class images": "generating class images", "preview": "sampling a preview"}
EVENT = "krona.train"  # websocket message the web extension draws the live loss chart from


def _send(event: dict) -> None:
    try:
        from server import PromptServer

        PromptServer.instance.send_sync(EVENT, event)
    except Exception:  # headless use without a server (tests importing the node)
        pass


def _images(batch: torch.Tensor) -> list[torch.Tensor]:
    """ComfyUI IMAGE (B, H, W, 3) in [0, 1] → list of (3, H, W), as ordinary (non-inference) tensors."""
    return [img.movedim(-1, 0).clone() for img in batch]


def _to_image(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 255.0)[None]


class TrainKronA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TrainKronA",
            display_name="Train KronA",
            category="training/KronA",
            description="DreamBooth-train a KronA (Kronecker-product) adapter on a few images. Defaults are the "
                        "DiffuseKronA paper's: (64, 8) factors on attention, AdamW lr 1e-3, batch 1 × accumulation 4; "
                        "steps, resolution and crop left at 'auto' follow the base's family (SD1.x/SD2.x: 500 steps at "
                        "512 px, SDXL: 1000 at 1024 px, random crop), and the node's text output says which it applied.",
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("clip", optional=True,
                              tooltip="Encodes the prompts of the images input (and class prompts, validation previews)."),
                io.Vae.Input("vae", optional=True, tooltip="Encodes the images input; decodes previews."),
                io.Image.Input("images", optional=True,
                               tooltip="The instance images (a batch, e.g. from Load Image nodes); or connect latents + "
                                       "conditioning instead."),
                io.String.Input("instance_prompt", default="a photo of sks person",
                                tooltip="Prompt with a rare token for the subject; also the file's trigger words."),
                io.Int.Input("steps", default=0, min=0, max=100000,
                             tooltip="Optimizer steps; 0 = the base family's (500 SD1.x/SD2.x, 1000 SDXL)."),
                io.Float.Input("learning_rate", default=1e-3, min=1e-7, max=1.0, step=1e-5),
                io.Int.Input("a1", default=64, min=1, max=4096, tooltip="Rows of the small factor A (divisor fallback per layer)."),
                io.Int.Input("a2", default=8, min=1, max=4096, tooltip="Columns of the small factor A."),
                io.Combo.Input("targets", options=TARGETS, default="attn"),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True),
                io.String.Input("captions", default="", multiline=True, optional=True,
                                tooltip="One caption per image, line by line (empty: the instance prompt for all)."),
                io.String.Input("class_prompt", default="", optional=True, tooltip="Prior preservation, e.g. 'a photo of a person'."),
                io.Image.Input("class_images", optional=True),
                io.Int.Input("num_class_images", default=0, min=0, max=1000, optional=True,
                             tooltip="Class images to generate with the base model when none are connected."),
                io.Float.Input("prior_loss_weight", default=1.0, min=0.0, max=10.0, step=0.05, optional=True),
                io.Int.Input("parameter_budget", default=0, min=0, max=10**9, optional=True,
                             tooltip="Total trainable parameters; per-layer shapes chosen to fit (0: use a1/a2)."),
                io.Combo.Input("schedule", options=SCHEDULES, default="constant", optional=True),
                io.Int.Input("warmup_steps", default=0, min=0, max=100000, optional=True),
                io.Int.Input("batch_size", default=1, min=1, max=64, optional=True),
                io.Int.Input("grad_accum", default=4, min=1, max=256, optional=True),
                io.Int.Input("resolution", default=0, min=0, max=4096, step=64, optional=True,
                             tooltip="Bucket side in pixels; 0 = the base family's (512 SD1.x/SD2.x, 1024 SDXL)."),
                io.Combo.Input("crop", options=CROP_OPTIONS, default="auto", optional=True,
                               tooltip="auto = the family's (random, chosen once per image, as the official scripts)."),
                io.Boolean.Input("shuffle_caption", default=False, optional=True,
                                 tooltip="Shuffle the comma-separated caption tokens at each step (kohya's shuffle_caption)."),
                io.Int.Input("keep_tokens", default=0, min=0, max=75, optional=True,
                             tooltip="With shuffling, the first N tokens stay in place (the trigger word)."),
                io.Float.Input("caption_dropout", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Share of steps trained with an empty caption (kohya's caption_dropout_rate)."),
                io.Boolean.Input("train_text_encoder", default=False, optional=True),
                io.Float.Input("noise_offset", default=0.0, min=0.0, max=1.0, step=0.01, optional=True),
                io.Float.Input("min_snr_gamma", default=0.0, min=0.0, max=100.0, step=0.5, optional=True,
                               tooltip="0 = off; 5 is the common choice."),
                io.Int.Input("checkpoint_every", default=0, min=0, max=100000, optional=True,
                             tooltip="Save a resumable checkpoint every N steps under models/krona/checkpoints/."),
                io.Int.Input("preview_every", default=0, min=0, max=100000, optional=True,
                             tooltip="Sample a validation image every N steps (fixed seed and prompt)."),
                io.String.Input("validation_prompt", default="", optional=True),
                io.String.Input("name", default="KronA", optional=True, tooltip="Name of the run and of its checkpoints."),
                io.Latent.Input("latents", optional=True,
                                tooltip="Instead of images: the training latents (e.g. VAE Encode), any model family."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="With latents: their conditioning from any text encoder (one for all latents, "
                                              "or one per latent, as ComfyUI's Train LoRA)."),
                io.Combo.Input("timestep_sampling", options=["auto", *DISTRIBUTIONS], default="auto", optional=True,
                               tooltip="Flow-matching models (Flux, SD3 …): how σ is drawn; auto = the family's rule."),
                io.Float.Input("flow_shift", default=0.0, min=0.0, max=100.0, step=0.01, optional=True,
                               tooltip="Flow-matching models: a fixed σ shift (SD3 3.0); 0 = the family's (Flux: by resolution)."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                io.Clip.Output(display_name="CLIP"),
                KRONA.Output(display_name="KRONA"),
                io.Image.Output(display_name="loss_curve"),
                io.Image.Output(display_name="previews"),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, instance_prompt: str, steps: int, learning_rate: float, a1: int, a2: int,
                targets: str, seed: int, clip=None, vae=None, images=None, captions: str = "", class_prompt: str = "", class_images=None,
                num_class_images: int = 0, prior_loss_weight: float = 1.0, parameter_budget: int = 0,
                schedule: str = "constant", warmup_steps: int = 0, batch_size: int = 1, grad_accum: int = 4,
                resolution: int = 0, crop: str = "auto", shuffle_caption: bool = False, keep_tokens: int = 0,
                caption_dropout: float = 0.0, train_text_encoder: bool = False, noise_offset: float = 0.0,
                min_snr_gamma: float = 0.0, checkpoint_every: int = 0, preview_every: int = 0,
                validation_prompt: str = "", name: str = "KronA", latents=None, conditioning=None,
                timestep_sampling: str = "auto", flow_shift: float = 0.0) -> io.NodeOutput:
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        run_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in (name or "KronA"))
        krona_dir = folders.folder_paths.get_folder_paths(folders.FOLDER)[0]
        checkpoint_dir = os.path.join(krona_dir, "checkpoints", f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}")
        config = TrainConfig(
            steps=steps or None, lr=learning_rate, a1=a1, a2=a2, targets=targets, seed=seed, budget=parameter_budget or None,
            schedule=schedule, warmup_steps=warmup_steps, batch_size=batch_size, grad_accum=grad_accum,
            train_text_encoder=train_text_encoder, prior_loss_weight=prior_loss_weight, noise_offset=noise_offset,
            min_snr_gamma=min_snr_gamma or None, checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir,
            validate_every=preview_every, validation_prompt=validation_prompt or None,
            shuffle_caption=shuffle_caption, keep_tokens=keep_tokens, caption_dropout=caption_dropout,
            timestep_sampling=timestep_sampling, flow_shift=flow_shift or None,
        )
        with torch.inference_mode(False), torch.enable_grad():
            spec = JobSpec(images=_images(images) if images is not None else [], captions=[c.strip() for c in (captions or "").splitlines() if c.strip()],
                           instance_prompt=instance_prompt, config=config, resolution=resolution or None,
                           crop=None if crop == "auto" else crop, class_prompt=class_prompt,
                           class_images=_images(class_images) if class_images is not None else (),
                           num_class_images=num_class_images, class_dir=os.path.join(krona_dir, "class_images"),
                           title=run_name, record={"host": "ComfyUI"})
            try:
                job = _train(model, clip, vae, spec, node_id, latents, conditioning)
                new_model, new_clip, report = apply_to(model, clip, job.file, 1.0, 1.0)
            except (JobError, TrainingDiverged) as exc:
                raise ValueError(f"Train KronA: {exc}") from None
        losses = job.train.losses
        previews = (torch.stack([p.movedim(0, -1) for _, p in job.train.previews]) if job.train.previews
                    else torch.zeros(1, 64, 64, 3))
        _send({"node": node_id, "event": "done", "losses": losses})
        text = (f"trained {run_name}: {len(job.file.modules)} modules, {job.file.num_parameters():,} parameters, final loss "
                f"{losses[-1]:.4f}" + (f"; checkpoints in {checkpoint_dir}" if job.train.checkpoints else ""))
        applied = describe_defaults(job.defaults)
        return io.NodeOutput(new_model, new_clip, job.file, _to_image(job.curve), previews,
                             ui=ui.PreviewText("\n".join([text, *([applied] if applied else []), *report])))


def _with_latents(spec: JobSpec, denoiser: ComfyDenoiser, latents, conditioning) -> JobSpec:
    """The spec with a LATENT + CONDITIONING input as its examples (in the model's space, through the model's own
    process_latent_in and extra_conds)."""
    if latents is None:
        if conditioning is not None:
            raise JobError("conditioning is connected without latents: connect the latents it conditions")
        return spec
    if conditioning is None:
        raise JobError("latents need their conditioning (connect e.g. a CLIP Text Encode to conditioning)")
    samples = latents["samples"]
    in_space = denoiser.latents_in(samples)
    conds = [denoiser.model_conds(entry, tuple(in_space.shape[1:])) for entry in conditioning]
    return dataclasses.replace(spec, latents=list(in_space), conds=conds)


def _train(model, clip, vae, spec: JobSpec, node_id, latents=None, conditioning=None) -> JobResult:
    """Run the job on ComfyUI's models; the host's model is restored and unhooked whatever happens."""
    bars: dict[str, comfy.utils.ProgressBar] = {}

    def on_step(done: int, total: int, loss: float, lr: float) -> None:
        bars.setdefault("training", comfy.utils.ProgressBar(total)).update_absolute(done, total)
        _send({"node": node_id, "step": done, "total": total, "loss": loss, "lr": lr})

    def on_progress(phase: str, done: int, total: int) -> None:
        label = PHASE_LABELS.get(phase, phase)
        if phase in PHASE_LABELS and total:
            if done == 0 or phase not in bars:  # a phase's start (a reused class-image cache starts above 0)
                log.info("Train KronA: %s (%d)", label, total)
            if phase == "preview" and done == 0:
                bars.pop(phase, None)  # a fresh bar per preview
            bars.setdefault(phase, comfy.utils.ProgressBar(total)).update_absolute(done, total)
        _send({"node": node_id, "event": "progress", "phase": label, "done": done, "total": total})

    events = JobEvents(on_step=on_step, on_progress=on_progress, should_stop=comfy.model_management.processing_interrupted)
    denoiser = ComfyDenoiser(model, clip, vae, spec.config.train_text_encoder)
    spec = _with_latents(spec, denoiser, latents, conditioning)
    spec.validate()  # before the model is loaded
    with denoiser:
        applied = describe_defaults(resolve_defaults(spec, denoiser.family)[3])
        if applied:  # said before the work starts (the node's text output repeats it at the end)
            log.info("Train KronA: %s", applied)
            _send({"node": node_id, "event": "progress", "phase": applied, "done": 0, "total": 0})
        try:
            job = run_job(denoiser, spec, events)
        except TrainingInterrupted as exc:
            _send({"node": node_id, "event": "cancelled", "step": exc.step, "checkpoint": exc.checkpoint})
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise
        job.remove_adapters()  # the result goes back through ComfyUI's own patching (apply_to)
    return job

"""The DiffuseKronA DreamBooth loop, for any denoiser behind `Denoiser`.

`train()` attaches KronA adapters (`attach_adapters`) and optimises them with `fit()`, which
trains whatever adapters it is given (LoRA baselines in the benchmarks go through the same loop).
The loop owns prior preservation, noise and timestep draws from one CPU generator (runs are
reproducible and resumable bit for bit), gradient accumulation and clipping, mixed precision on
CUDA, checkpoints with exact resume, cancel at a step boundary, the NaN stop, validation previews
and the loss history.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from ..adapters.attach import attach
from ..adapters.layers import KronANetwork
from .checkpoints import RunState, restore, save_checkpoint
from .config import TrainConfig, TrainingDiverged, TrainingInterrupted
from .data import Example, Sampler, dataset_hash
from .dataset import draw_seed
from .denoiser import Cond, Denoiser
from .objective import diffusion_loss, lr_factor, make_optimizer, stack_cond
from .sampling import preview

OnStep = Callable[[int, float, float], None]  # (steps done, loss, learning rate)
OnPreview = Callable[[int, torch.Tensor], None]  # (steps done, image (3, H, W) in [0, 1])


@dataclass
class TrainResult:
    handles: list[Any]
    losses: list[float]
    previews: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    checkpoints: list[tuple[int, str]] = field(default_factory=list)  # (step, adapter file)
    record: dict[str, Any] = field(default_factory=dict)


def attach_adapters(denoiser: Denoiser, config: TrainConfig) -> list[KronANetwork]:
    """Fresh KronA adapters (float32 factors) on the networks `config` trains."""
    handles = []
    # a backend whose modules the presets do not name as they are (fused diffusers transformers) translates them
    targets = getattr(denoiser, "resolve_targets", lambda t: t)(config.targets)
    family = getattr(denoiser, "family", None)
    base = family.name if family is not None else None  # else attach reads it off the model
    # fused weights whose rows several of the model's modules compute (Flux's linear1 in diffusers): one pair each
    fused = getattr(denoiser, "fused_weights", None)
    for network, module in denoiser.networks().items():
        if network != "unet" and not config.train_text_encoder:
            continue
        handles.append(attach(module, config.a1, config.a2, targets, budget=config.budget, network=network, base=base,
                              seed=config.seed + len(handles), dtype=torch.float32,
                              fused=fused if network == "unet" else None))
    return handles


def training_record(config: TrainConfig, examples: Sequence[Example], class_examples: Sequence[Example]) -> dict[str, Any]:
    record = {k: v for k, v in asdict(config).items() if k not in ("checkpoint_dir",)}
    record.update(
        dataset_hash=dataset_hash(examples),
        instance_images=len(examples),
        prior_preservation=bool(class_examples),
        class_images=len(class_examples),
        class_prompt=class_examples[0].prompt if class_examples else None,
        trainer="krona_core",
    )
    return record


def train(denoiser: Denoiser, examples: Sequence[Example], config: TrainConfig, **kwargs: Any) -> TrainResult:
    """Train KronA adapters on `denoiser` and leave them attached (the handles are returned).

    Keyword arguments are `fit`'s. Steps left unset are the denoiser's family default. If the run fails or is cancelled, the adapters are removed: a
    model is never left hooked by a run that did not finish.
    """
    config = config.resolved(getattr(denoiser, "family", None))
    config.validate()
    handles = attach_adapters(denoiser, config)
    try:
        return fit(denoiser, handles, examples, config, **kwargs)
    except BaseException:
        for handle in handles:
            handle.remove()
        raise


def fit(
    denoiser: Denoiser,
    handles: Sequence[Any],
    examples: Sequence[Example],
    config: TrainConfig,
    *,
    class_examples: Sequence[Example] = (),
    resume_from: str | None = None,
    on_step: OnStep | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_preview: OnPreview | None = None,
    on_preview_progress: Callable[[int, int], None] | None = None,
    reduce_gradients: Callable[[Iterable[torch.Tensor]], None] | None = None,
    rank: int = 0,
) -> TrainResult:
    """Optimise the parameters of `handles` (anything with `.network` and `.parameters()`; KronA
    handles also checkpoint and resume) on the denoising objective.

    on_step(step, loss, lr) after each optimizer step; on_preview_progress(done, total) per sampling
    step of a validation preview; should_stop() is polled at step boundaries
    (cancel → TrainingInterrupted, after saving a checkpoint when a checkpoint_dir is set);
    reduce_gradients averages adapter gradients across processes; rank > 0 (multi-process) draws
    its own batches and noise (exact resume is single-process).
    """
    config.validate()
    if not examples:
        raise ValueError("no training examples")
    if any(ex.cond is not None for ex in examples) and (config.captions.varies or config.train_text_encoder):
        raise ValueError("examples with precomputed conditioning train without their captions: caption shuffle, "
                         "dropout and text-encoder training need prompts")
    run = _Run(denoiser, handles, examples, config, class_examples, rank)
    if resume_from:
        run.resume(resume_from)
    started = time.perf_counter()
    for step in range(run.start, config.steps):
        if should_stop is not None and should_stop():
            raise TrainingInterrupted(step, run.checkpoint(step) if config.checkpoint_dir else run.last_checkpoint)
        loss, lr = run.step(step, reduce_gradients)
        done = step + 1
        if on_step is not None:
            on_step(done, loss, lr)
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            run.checkpoint(done)
        if config.validate_every and config.validation_prompt and done % config.validate_every == 0:
            image = preview(denoiser, config, examples[0], on_preview_progress)
            run.result.previews.append((done, image))
            if on_preview is not None:
                on_preview(done, image)
    history = run.state.history
    run.result.record.update(final_loss=history[-1] if history else None, seconds=round(time.perf_counter() - started, 2))
    return run.result


class _Run:
    """One run's state and its step: batches, losses, backward, the optimizer update."""

    def __init__(self, denoiser: Denoiser, handles: Sequence[Any], examples: Sequence[Example], config: TrainConfig,
                 class_examples: Sequence[Example], rank: int):
        self.denoiser, self.config, self.rank = denoiser, config, rank
        self.examples, self.class_examples = examples, class_examples
        self.params_unet = [p for h in handles if h.network == "unet" for p in h.parameters()]
        self.params_te = [p for h in handles if h.network != "unet" for p in h.parameters()]
        groups = [{"params": self.params_unet, "lr": config.lr}]
        if self.params_te:
            groups.append({"params": self.params_te, "lr": config.text_encoder_lr or config.lr})
        optimizer = make_optimizer(groups, config)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.state = RunState(handles, optimizer, torch.Generator().manual_seed(config.seed + 7919 * rank),
                              Sampler(examples, config.batch_size),
                              Sampler(class_examples, config.batch_size) if class_examples else None, [])
        self.result = TrainResult(list(handles), self.state.history, record=training_record(config, examples, class_examples))
        self.start = 0
        self.last_checkpoint: str | None = None
        self._conds: dict[tuple, Cond] = {}  # (prompt as drawn, size) → conditioning (frozen text encoders)
        self._class_conds: dict[tuple, Cond] = {}
        autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision)
        self.autocast = autocast_dtype if autocast_dtype is not None and denoiser.device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast == torch.float16 else None

    def resume(self, checkpoint: str) -> None:
        self.start = restore(checkpoint, self.state)
        self.last_checkpoint = checkpoint
        if self.rank:
            self.state.generator.manual_seed(self.config.seed + 7919 * self.rank + self.start)

    def checkpoint(self, step: int) -> str:
        self.last_checkpoint = save_checkpoint(self.config.checkpoint_dir, step, self.state, self.result.record)
        self.result.checkpoints.append((step, self.last_checkpoint))
        return self.last_checkpoint

    def _cond(self, batch: list[int], pool: Sequence[Example], memo: dict[tuple, Cond], step: int, round_: int) -> Cond:
        precomputed = [pool[i].cond for i in batch]
        if all(c is not None for c in precomputed):
            return stack_cond(precomputed)
        policy, kind = self.config.captions, "class" if pool is self.class_examples else "instance"
        prompts = [policy.apply(pool[i].prompt, draw_seed(self.config.seed, step, round_, slot, kind))
                   for slot, i in enumerate(batch)]
        sizes = [pool[i].size for i in batch]
        if self.config.train_text_encoder:
            return self.denoiser.encode_prompts(prompts, sizes)
        for prompt, size in zip(prompts, sizes):
            if (prompt, size) not in memo:
                with torch.no_grad():
                    memo[(prompt, size)] = self.denoiser.encode_prompts([prompt], [size])
        return stack_cond([memo[key] for key in zip(prompts, sizes)])

    def _loss(self, step: int, round_: int) -> torch.Tensor:
        s, config, generator = self.state, self.config, self.state.generator
        with torch.autocast("cuda", dtype=self.autocast or torch.float16, enabled=self.autocast is not None):
            batch = s.sampler.next(generator)
            latents = torch.stack([self.examples[i].latent for i in batch])
            cond = self._cond(batch, self.examples, self._conds, step, round_)
            loss = diffusion_loss(self.denoiser, latents, cond, generator, config)
            if s.class_sampler is not None:
                cbatch = s.class_sampler.next(generator)
                clat = torch.stack([self.class_examples[i].latent for i in cbatch])
                cond = self._cond(cbatch, self.class_examples, self._class_conds, step, round_)
                loss = loss + config.prior_loss_weight * diffusion_loss(self.denoiser, clat, cond, generator, config)
        return loss

    def step(self, step: int, reduce_gradients: Callable[[Iterable[torch.Tensor]], None] | None) -> tuple[float, float]:
        optimizer, config = self.state.optimizer, self.config
        for group, base in zip(optimizer.param_groups, self.base_lrs):
            group["lr"] = base * lr_factor(step, config)
        total = 0.0
        for round_ in range(config.grad_accum):
            loss = self._loss(step, round_)
            if not torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged(step, float(loss.detach()), self.last_checkpoint)
            scaled = loss / config.grad_accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += float(loss.detach()) / config.grad_accum
        params = self.params_unet + self.params_te
        if reduce_gradients is not None:
            reduce_gradients(p.grad for p in params if p.grad is not None)
        if self.scaler:
            self.scaler.unscale_(optimizer)
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.state.history.append(total)
        return total, optimizer.param_groups[0]["lr"]

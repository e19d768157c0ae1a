"""The DiffuseKronA DreamBooth trainer: one loop for any denoiser behind a small interface.

Backends implement `Denoiser` (diffusers pipelines in `train_diffusers.py`, ComfyUI models in
the pack's nodes). The loop owns everything else: examples and aspect buckets, prior
preservation, noise/timestep sampling (one CPU generator, so runs are reproducible and resumable
bit-for-bit), epsilon / v-prediction targets, min-SNR-γ, noise offset, AdamW (8-bit when
bitsandbytes is there), warm-up + constant/cosine/linear schedules, gradient accumulation and
clipping, checkpoints with exact resume, cancel at a step boundary, NaN stop, validation
previews and the loss history.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F

from .format import SUFFIX, read
from .layers import KronANetwork, attach

Cond = dict[str, torch.Tensor]  # batch-first tensors (encoder states, pooled embeds, size ids …)


class Denoiser(Protocol):
    """What the loop needs from a model family."""

    prediction_type: str  # "epsilon" or "v_prediction"
    alphas_cumprod: torch.Tensor  # (T,) on the CPU
    device: torch.device

    def networks(self) -> dict[str, torch.nn.Module]:
        """Trainable candidates by network name: {"unet": …, "te": …} (te1/te2 for SDXL)."""

    def encode_prompts(self, prompts: Sequence[str], sizes: Sequence["SizeInfo"]) -> Cond:
        """Conditioning for a batch; differentiable when text encoders are being trained."""

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The model's native prediction (ε or v) for VP-noised latents at integer timesteps."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] → scaled latents."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → (N, 3, H, W) in [-1, 1]."""


class TrainingInterrupted(RuntimeError):
    """Cancelled at a step boundary; `checkpoint` is the state saved at that boundary."""

    def __init__(self, step: int, checkpoint: str | None):
        self.step = step
        self.checkpoint = checkpoint
        super().__init__(f"training cancelled after step {step}" + (f"; checkpoint kept at {checkpoint}" if checkpoint else ""))


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; nothing from that step was applied or saved."""

    def __init__(self, step: int, loss: float, checkpoint: str | None):
        self.step = step
        self.checkpoint = checkpoint
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint had been written yet"
        super().__init__(f"loss became {loss} at step {step}; training stopped, {kept}. Lower the learning rate "
                         "or check the images.")


@dataclass(frozen=True)
class SizeInfo:
    """SDXL micro-conditioning of one example (pixels): original size, crop top-left, target size."""

    original: tuple[int, int]
    crop: tuple[int, int]
    target: tuple[int, int]


@dataclass
class Example:
    latent: torch.Tensor  # (C, h, w) on the CPU
    prompt: str
    size: SizeInfo
    is_class: bool = False


@dataclass
class TrainConfig:
    """Defaults are the paper's DiffuseKronA recipe (SD1.x/SD2.x; SDXL uses 1000 steps)."""

    steps: int = 500
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 1
    grad_accum: int = 4
    schedule: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes)
    max_grad_norm: float = 1.0
    seed: int = 0
    a1: int = 64
    a2: int = 8
    budget: int | None = None
    targets: str | list[str] = "attn"
    train_text_encoder: bool = False
    text_encoder_lr: float | None = None
    prior_loss_weight: float = 1.0
    noise_offset: float = 0.0
    min_snr_gamma: float | None = None
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU only)
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    validate_every: int = 0
    validation_prompt: str | None = None
    validation_seed: int = 0
    validation_steps: int = 20

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be ≥ 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be a positive number, got {self.lr}")
        if self.schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"schedule must be constant, cosine or linear, got {self.schedule!r}")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"optimizer must be adamw or adamw8bit, got {self.optimizer!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("checkpoint_every needs checkpoint_dir")


@dataclass
class TrainResult:
    handles: list[KronANetwork]
    losses: list[float]
    previews: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- data


def buckets_for(resolution: int, step: int = 64, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """(height, width) buckets of about resolution² pixels, sides multiples of `step`."""
    area = resolution * resolution
    out = set()
    width = step
    while width <= resolution * max_aspect:
        height = int(area // width) // step * step
        if height >= step and max(width, height) / min(width, height) <= max_aspect:
            out.add((height, width))
        width += step
    out.add((resolution, resolution))
    return sorted(out)


def fit_to_bucket(image: torch.Tensor, buckets: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, SizeInfo]:
    """Resize (keeping aspect) and centre-crop an image (3, H, W) in [0, 1] to its nearest-aspect bucket."""
    _, h, w = image.shape
    bh, bw = min(buckets, key=lambda b: abs(math.log((b[1] / b[0]) / (w / h))))
    scale = max(bh / h, bw / w)
    nh, nw = max(bh, round(h * scale)), max(bw, round(w * scale))
    resized = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - bh) // 2, (nw - bw) // 2
    return resized[:, top:top + bh, left:left + bw].clamp(0, 1), SizeInfo((h, w), (top, left), (bh, bw))


def prepare_examples(
    denoiser: Denoiser,
    images: Sequence[torch.Tensor],
    prompts: Sequence[str],
    resolution: int,
    is_class: bool = False,
    batch: int = 4,
    bucket_step: int = 64,
) -> list[Example]:
    """Bucket, encode once with the (frozen) VAE, and keep latents on the CPU.

    bucket_step is the side granularity in pixels: 64 (8 latent pixels) for SD VAEs.
    """
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    buckets = buckets_for(resolution, bucket_step)
    fitted = [fit_to_bucket(img, buckets) for img in images]
    examples: list[Example] = []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (img, _) in enumerate(fitted):
        groups.setdefault(tuple(img.shape[1:]), []).append(i)
    latents: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for indices in groups.values():
            for start in range(0, len(indices), batch):
                chunk = indices[start:start + batch]
                pixels = torch.stack([fitted[i][0] for i in chunk]) * 2 - 1
                encoded = denoiser.encode_images(pixels).float().cpu()
                for i, lat in zip(chunk, encoded):
                    latents[i] = lat
    for i in range(len(images)):
        examples.append(Example(latents[i], prompts[i], fitted[i][1], is_class))
    return examples


def examples_from_latents(latents: torch.Tensor, prompts: Sequence[str], scale: int = 8, is_class: bool = False) -> list[Example]:
    """Examples straight from latents (teacher–student tests, cached datasets)."""
    out = []
    for lat, prompt in zip(latents, prompts):
        h, w = lat.shape[-2] * scale, lat.shape[-1] * scale
        out.append(Example(lat.float().cpu(), prompt, SizeInfo((h, w), (0, 0), (h, w)), is_class))
    return out


def dataset_hash(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(ex.prompt.encode())
        digest.update(ex.latent.numpy().astype("float32").tobytes())
    return digest.hexdigest()


class _Sampler:
    """Batches from one aspect bucket at a time, each epoch a fresh permutation (own generator)."""

    def __init__(self, examples: Sequence[Example], batch_size: int):
        self.buckets: dict[tuple, list[int]] = {}
        for i, ex in enumerate(examples):
            self.buckets.setdefault(tuple(ex.latent.shape), []).append(i)
        self.batch_size = batch_size
        self.queue: list[list[int]] = []

    def _refill(self, generator: torch.Generator) -> None:
        batches = []
        for indices in self.buckets.values():
            order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            batches += [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        self.queue = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]

    def next(self, generator: torch.Generator) -> list[int]:
        if not self.queue:
            self._refill(generator)
        return self.queue.pop()

    def state(self) -> list[list[int]]:
        return [list(b) for b in self.queue]

    def load_state(self, queue: list[list[int]]) -> None:
        self.queue = [list(b) for b in queue]


# --------------------------------------------------------------------------- optimisation


def make_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes); use adamw") from None
        return bnb.optim.AdamW8bit(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def diffusion_loss(
    denoiser: Denoiser,
    latents: torch.Tensor,
    cond: Cond,
    generator: torch.Generator,
    config: TrainConfig,
) -> torch.Tensor:
    """Per-batch denoising loss in the model's own parameterisation (ε or v), min-SNR weighted."""
    device = denoiser.device
    noise = torch.randn(latents.shape, generator=generator)
    if config.noise_offset:
        noise = noise + config.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
    ab = denoiser.alphas_cumprod
    t = torch.randint(0, ab.numel(), (latents.shape[0],), generator=generator)
    a = ab[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - ab[t]).sqrt().view(-1, 1, 1, 1)
    x0, noise = latents.to(device), noise.to(device)
    x_t = a.to(device) * x0 + s.to(device) * noise
    if denoiser.prediction_type == "v_prediction":
        target = a.to(device) * noise - s.to(device) * x0
    else:
        target = noise
    pred = denoiser.predict(x_t, t.to(device), cond)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.dim())))
    if config.min_snr_gamma:
        snr = (ab[t] / (1 - ab[t])).to(device)
        clipped = snr.clamp(max=config.min_snr_gamma)
        weight = clipped / (snr + 1) if denoiser.prediction_type == "v_prediction" else clipped / snr
        per_sample = per_sample * weight
    return per_sample.mean()


def _stack_cond(conds: Sequence[Cond]) -> Cond:
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


# --------------------------------------------------------------------------- checkpoints


def _state_tensors(optimizer: torch.optim.Optimizer, generator: torch.Generator, history: list[float]) -> tuple[dict, dict]:
    tensors: dict[str, torch.Tensor] = {"rng.cpu": generator.get_state().clone(), "history": torch.tensor(history, dtype=torch.float64)}
    meta_state: dict[str, dict] = {}
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                meta_state.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": meta_state}


def save_checkpoint(directory: str, step: int, handles: Sequence[KronANetwork], optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, history: list[float], sampler: _Sampler, record: Mapping[str, Any],
                    class_sampler: _Sampler | None = None) -> str:
    """`step_NNNNNN.krona.safetensors` (float32 factors) + `.state.safetensors` (optimizer, RNG,
    data order, losses) — safetensors only, so resuming never unpickles anything."""
    from safetensors.torch import save_file

    from .format import save

    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, f"step_{step:06d}")
    adapter_path = save(stem + SUFFIX, handles, dtype=torch.float32, overwrite=True, training={**record, "steps_done": step},
                        title=os.path.basename(stem))
    tensors, meta = _state_tensors(optimizer, generator, history)
    state_meta = {"step": str(step), "optimizer": json.dumps(meta), "sampler": json.dumps(sampler.state()),
                  "class_sampler": json.dumps(class_sampler.state() if class_sampler is not None else [])}
    tmp = stem + ".state.safetensors.tmp"
    save_file(tensors, tmp, state_meta)
    os.replace(tmp, stem + ".state.safetensors")
    return adapter_path


def _restore(checkpoint: str, handles: Sequence[KronANetwork], optimizer: torch.optim.Optimizer,
             generator: torch.Generator, sampler: _Sampler, class_sampler: _Sampler | None) -> tuple[int, list[float]]:
    from safetensors import safe_open

    file = read(checkpoint)
    by_key = {}
    for handle in handles:
        by_key.update({key: (handle, path) for key, path in zip(handle.factors(), handle.paths())})
    missing = set(by_key) - set(file.modules)
    if missing or set(file.modules) - set(by_key):
        raise ValueError(f"{checkpoint}: its modules do not match this run's adapters (e.g. {sorted(missing)[:2]})")
    for key, (handle, path) in by_key.items():
        handle.adapter(path).load_factors(*file.modules[key])
    state_path = checkpoint[: -len(SUFFIX)] + ".state.safetensors"
    with safe_open(state_path, "pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    opt_meta = json.loads(meta["optimizer"])
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, scalars in opt_meta["scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": opt_meta["param_groups"]})
    generator.set_state(tensors["rng.cpu"])
    sampler.load_state(json.loads(meta["sampler"]))
    if class_sampler is not None:
        class_sampler.load_state(json.loads(meta.get("class_sampler", "[]")))
    return int(meta["step"]), tensors["history"].tolist()


# --------------------------------------------------------------------------- sampling (previews, class images)


@torch.no_grad()
def ddim_sample(denoiser: Denoiser, cond: Cond, uncond: Cond, shape: tuple[int, ...], seed: int,
                steps: int = 20, guidance: float = 5.0) -> torch.Tensor:
    """Deterministic DDIM (η = 0) with classifier-free guidance; returns latents."""
    ab = denoiser.alphas_cumprod.double()
    timesteps = torch.linspace(ab.numel() - 1, 0, steps).round().long()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    both = _stack_cond([uncond, cond])
    for i, t in enumerate(timesteps):
        a_t = ab[t]
        inp = torch.cat([x, x]).float().to(denoiser.device)
        out = denoiser.predict(inp, torch.full((inp.shape[0],), int(t), device=denoiser.device), both).double().cpu()
        out_u, out_c = out.chunk(2)
        out = out_u + guidance * (out_c - out_u)
        if denoiser.prediction_type == "v_prediction":
            x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
            eps = (1 - a_t).sqrt() * x + a_t.sqrt() * out
        else:
            eps = out
            x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        a_prev = ab[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, dtype=torch.float64)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x.float()


def generate_class_examples(denoiser: Denoiser, class_prompt: str, count: int, latent_shape: tuple[int, int, int],
                            seed: int, steps: int = 20) -> list[Example]:
    """Prior-preservation examples sampled from the base model (adapters not yet attached)."""
    h, w = latent_shape[-2] * 8, latent_shape[-1] * 8
    size = SizeInfo((h, w), (0, 0), (h, w))
    cond = denoiser.encode_prompts([class_prompt], [size])
    uncond = denoiser.encode_prompts([""], [size])
    return [Example(ddim_sample(denoiser, cond, uncond, (1, *latent_shape), seed + i, steps)[0], class_prompt, size, True)
            for i in range(count)]


# --------------------------------------------------------------------------- the loop


def _attach(denoiser: Denoiser, config: TrainConfig) -> list[KronANetwork]:
    handles = []
    for network, module in denoiser.networks().items():
        if network != "unet" and not config.train_text_encoder:
            continue
        handles.append(attach(module, config.a1, config.a2, config.targets, budget=config.budget,
                              network=network, seed=config.seed + len(handles), dtype=torch.float32))
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


def train(
    denoiser: Denoiser,
    examples: Sequence[Example],
    config: TrainConfig,
    *,
    class_examples: Sequence[Example] = (),
    resume_from: str | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_preview: Callable[[int, torch.Tensor], None] | None = None,
    reduce_gradients: Callable[[Iterable[torch.Tensor]], None] | None = None,
    loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    adapters: Callable[[Denoiser, TrainConfig], list] | None = None,
    rank: int = 0,
) -> TrainResult:
    """Train KronA adapters on `denoiser` and leave them attached (the handles are returned).

    on_step(step, loss, lr) after each optimizer step; should_stop() is polled at step
    boundaries (cancel → TrainingInterrupted after saving a checkpoint when a checkpoint_dir is
    set); reduce_gradients averages adapter gradients across processes (multi-GPU);
    loss_hook(step, loss) can replace the loss (used by tests to inject NaN); adapters(denoiser,
    config) replaces KronA by other trainable modules with `.network` (benchmarks train LoRA
    through the same loop). rank > 0 (multi-process) draws its own batches and noise; a resumed
    multi-process run continues with fresh per-rank streams (exact resume is single-process).
    """
    config.validate()
    if not examples:
        raise ValueError("no training examples")
    handles = (adapters or _attach)(denoiser, config)
    try:
        return _run(denoiser, examples, config, handles, class_examples, resume_from, on_step, should_stop,
                    on_preview, reduce_gradients, loss_hook, rank)
    except BaseException:
        for handle in handles:  # never leave a model hooked by a run that did not finish
            if hasattr(handle, "remove"):
                handle.remove()
        raise


def _run(denoiser, examples, config, handles, class_examples, resume_from, on_step, should_stop, on_preview,
         reduce_gradients, loss_hook, rank) -> TrainResult:
    params_unet = [p for h in handles if h.network == "unet" for p in h.parameters()]
    params_te = [p for h in handles if h.network != "unet" for p in h.parameters()]
    groups = [{"params": params_unet, "lr": config.lr}]
    if params_te:
        groups.append({"params": params_te, "lr": config.text_encoder_lr or config.lr})
    optimizer = make_optimizer(groups, config)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(config.seed + 7919 * rank)
    sampler = _Sampler(examples, config.batch_size)
    class_sampler = _Sampler(class_examples, config.batch_size) if class_examples else None
    record = training_record(config, examples, class_examples)
    history: list[float] = []
    start = 0
    if resume_from:
        start, history = _restore(resume_from, handles, optimizer, generator, sampler, class_sampler)
        if rank:
            generator.manual_seed(config.seed + 7919 * rank + start)
    result = TrainResult(handles, history, record=record)
    cache: dict[int, Cond] = {}
    class_cache: dict[int, Cond] = {}
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision)
    use_autocast = autocast_dtype is not None and denoiser.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_autocast and autocast_dtype == torch.float16 else None
    params = params_unet + params_te
    last_checkpoint = resume_from

    def conds(batch: list[int], pool: Sequence[Example], memo: dict[int, Cond]) -> Cond:
        if config.train_text_encoder:
            return denoiser.encode_prompts([pool[i].prompt for i in batch], [pool[i].size for i in batch])
        for i in batch:
            if i not in memo:
                with torch.no_grad():
                    memo[i] = denoiser.encode_prompts([pool[i].prompt], [pool[i].size])
        return _stack_cond([memo[i] for i in batch])

    started = time.perf_counter()
    for step in range(start, config.steps):
        if should_stop is not None and should_stop():
            if config.checkpoint_dir:
                last_checkpoint = save_checkpoint(config.checkpoint_dir, step, handles, optimizer, generator, history, sampler, record, class_sampler)
                result.checkpoints.append(last_checkpoint)
            raise TrainingInterrupted(step, last_checkpoint)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * lr_factor(step, config)
        total = 0.0
        for _ in range(config.grad_accum):
            batch = sampler.next(generator)
            with torch.autocast("cuda", dtype=autocast_dtype, enabled=use_autocast):
                latents = torch.stack([examples[i].latent for i in batch])
                loss = diffusion_loss(denoiser, latents, conds(batch, examples, cache), generator, config)
                if class_sampler is not None:
                    cbatch = class_sampler.next(generator)
                    clat = torch.stack([class_examples[i].latent for i in cbatch])
                    loss = loss + config.prior_loss_weight * diffusion_loss(denoiser, clat, conds(cbatch, class_examples, class_cache), generator, config)
            if loss_hook is not None:
                loss = loss_hook(step, loss)
            if not torch.isfinite(loss):
                optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged(step, float(loss.detach()), last_checkpoint)
            scaled = loss / config.grad_accum
            (scaler.scale(scaled) if scaler else scaled).backward()
            total += float(loss.detach()) / config.grad_accum
        if reduce_gradients is not None:
            reduce_gradients(p.grad for p in params if p.grad is not None)
        if scaler:
            scaler.unscale_(optimizer)
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(total)
        done = step + 1
        if on_step is not None:
            on_step(done, total, optimizer.param_groups[0]["lr"])
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
            last_checkpoint = save_checkpoint(config.checkpoint_dir, done, handles, optimizer, generator, history, sampler, record, class_sampler)
            result.checkpoints.append(last_checkpoint)
        if config.validate_every and config.validation_prompt and done % config.validate_every == 0:
            image = preview(denoiser, config, examples[0])
            result.previews.append((done, image))
            if on_preview is not None:
                on_preview(done, image)
    record.update(final_loss=history[-1] if history else None, seconds=round(time.perf_counter() - started, 2))
    return result


def preview(denoiser: Denoiser, config: TrainConfig, like: Example) -> torch.Tensor:
    """One validation image (3, H, W) in [0, 1] at the fixed seed and prompt."""
    size = like.size
    cond = denoiser.encode_prompts([config.validation_prompt or like.prompt], [size])
    uncond = denoiser.encode_prompts([""], [size])
    latents = ddim_sample(denoiser, cond, uncond, (1, *like.latent.shape), config.validation_seed, config.validation_steps)
    with torch.no_grad():
        image = denoiser.decode_latents(latents.to(denoiser.device)).float().cpu()[0]
    return ((image + 1) / 2).clamp(0, 1)

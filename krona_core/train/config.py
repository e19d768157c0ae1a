"""What a training run is asked to do (`TrainConfig`, the paper's recipe by default) and how it
can end early."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..families import Family, recipe
from ..families.flow import DISTRIBUTIONS
from .dataset import CaptionPolicy


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


@dataclass
class TrainConfig:
    """Defaults are the paper's DiffuseKronA recipe; `steps` left as None is the base family's
    (500 for SD1.x / SD2.x, 1000 for SDXL), resolved by `resolved()` when training starts."""

    steps: int | None = None
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
    # flow-matching bases (Flux, SD3 …): how σ is drawn; unset = the base family's own rule
    timestep_sampling: str = "auto"  # auto | logit_normal | uniform
    flow_shift: float | None = None  # a fixed shift s (σ' = sσ / (1 + (s − 1)σ)); replaces a resolution-dependent one
    logit_mean: float | None = None
    logit_std: float | None = None
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU only)
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    validate_every: int = 0
    validation_prompt: str | None = None
    validation_seed: int = 0
    validation_steps: int = 20
    shuffle_caption: bool = False  # kohya's shuffle_caption: tokens (split at ",") shuffled at each draw
    keep_tokens: int = 0  # the first N tokens stay in place (the trigger word)
    caption_dropout: float = 0.0  # kohya's caption_dropout_rate: this share of draws trains on ""

    @property
    def captions(self) -> CaptionPolicy:
        return CaptionPolicy(self.shuffle_caption, self.keep_tokens, self.caption_dropout)

    def resolved(self, family: Family | None) -> "TrainConfig":
        """This config with the family's defaults filled in (steps)."""
        if self.steps is not None:
            return self
        return dataclasses.replace(self, steps=recipe(family).steps)

    def validate(self, resolved: bool = True) -> None:
        """Raise ValueError for a setting out of range; `resolved` also requires steps to be set."""
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be ≥ 1")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be ≥ 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be a positive number, got {self.lr}")
        if self.schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"schedule must be constant, cosine or linear, got {self.schedule!r}")
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"optimizer must be adamw or adamw8bit, got {self.optimizer!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.timestep_sampling not in ("auto", *DISTRIBUTIONS):
            raise ValueError(f"timestep_sampling must be auto, {' or '.join(DISTRIBUTIONS)}, got {self.timestep_sampling!r}")
        if self.flow_shift is not None and not (self.flow_shift > 0 and math.isfinite(self.flow_shift)):
            raise ValueError(f"flow_shift must be a positive number, got {self.flow_shift}")
        if self.logit_std is not None and not (self.logit_std > 0 and math.isfinite(self.logit_std)):
            raise ValueError(f"logit_std must be a positive number, got {self.logit_std}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("checkpoint_every needs checkpoint_dir")
        self.captions.validate()
        if resolved and self.steps is None:
            raise ValueError("steps is not set: resolve the family's default first (TrainConfig.resolved)")

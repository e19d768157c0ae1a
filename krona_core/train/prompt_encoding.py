"""Text embeddings of prompts by a diffusers pipeline's own text encoders, offline: FLUX.1 (CLIP-L
pooled + T5) through `FluxPipeline.encode_prompt`, SD3 / SD3.5 (CLIP-L + CLIP-G + T5) through
`StableDiffusion3Pipeline.encode_prompt`, the pipeline loaded without its transformer, VAE and
scheduler. What `krona embed` writes into the embeddings file the flow trainer reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import families
from ..families.dit import DiTFamily
from .denoiser import Cond
from .diffusers_backend import BaseLoadError


class PromptEncodingError(BaseLoadError):
    """A pipeline folder whose text encoders cannot be loaded or run offline."""


def load_text_pipeline(folder: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(family, the pipeline with its text encoders and tokenizers only) of a FLUX.1 or SD3 / SD3.5
    diffusers pipeline folder."""
    import diffusers

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise PromptEncodingError(f"{folder}: not a diffusers pipeline folder (model_index.json missing)")
    family = families.for_diffusers_folder(folder)
    if not isinstance(family, DiTFamily) or not family.diffusers_pipeline:
        raise PromptEncodingError(f"{folder}: not a FLUX.1 or SD3 / SD3.5 pipeline (its model_index.json names "
                                  "no FluxPipeline / StableDiffusion3Pipeline)")
    cls = getattr(diffusers, family.diffusers_pipeline)
    try:
        pipe = cls.from_pretrained(folder, transformer=None, vae=None, scheduler=None, local_files_only=True,
                                   torch_dtype=dtype)
    except (OSError, ValueError, TypeError) as exc:
        raise PromptEncodingError(f"{folder}: its text encoders do not load offline ({exc})") from None
    last = "text_encoder_2" if family.name == "flux1" else "text_encoder_3"
    missing = [n for n in ("text_encoder", "tokenizer", last, last.replace("text_encoder", "tokenizer"))
               if getattr(pipe, n, None) is None]
    if missing:
        raise PromptEncodingError(f"{folder}: the pipeline has no {', '.join(missing)} (all its text encoders are needed)")
    return family, pipe.to(device)


def encode_prompts(family: DiTFamily, pipe, prompts: Sequence[str], max_sequence_length: int | None = None,
                   on_prompt: Callable[[int], None] | None = None) -> dict[str, Cond]:
    """{prompt: {encoder_hidden_states, pooled_projections}} (batch of 1 each) as the pipeline
    conditions its transformer; `on_prompt(done)` after each prompt."""
    extra = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
    out: dict[str, Cond] = {}
    device = pipe._execution_device
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            if family.name == "flux1":
                states, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, device=device, **extra)
            else:
                states, _, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, prompt_3=None, device=device,
                                                          do_classifier_free_guidance=False, **extra)
            out[prompt] = {"encoder_hidden_states": states.float().cpu(), "pooled_projections": pooled.float().cpu()}
            if on_prompt is not None:
                on_prompt(i + 1)
    return out

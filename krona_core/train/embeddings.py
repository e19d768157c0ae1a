"""Precomputed text embeddings: a safetensors file of {prompt: conditioning}, so a flow
transformer trains without loading its multi-GB text encoders (T5-XXL, CLIP-G …).

Layout: tensors `<i>.<name>` (batch of 1: `encoder_hidden_states`, `pooled_projections`) and
the metadata string `krona.prompts`, the JSON list of prompts in the order of i.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import torch

from ..files import atomic
from .denoiser import Cond
from .diffusers_backend import BaseLoadError

PROMPTS_KEY = "krona.prompts"
REQUIRED = ("encoder_hidden_states", "pooled_projections")


class EmbeddingsError(BaseLoadError):
    """An embeddings file that cannot be read, or lacks a prompt that is trained on."""


class EmbeddingTable:
    """{prompt: conditioning (batch of 1)}; `get` of a prompt it lacks names the file and the prompts it has."""

    def __init__(self, conds: Mapping[str, Cond], source: str = "embeddings"):
        for prompt, cond in conds.items():
            missing = [k for k in REQUIRED if k not in cond]
            if missing:
                raise EmbeddingsError(f"{source}: prompt {prompt!r} lacks {', '.join(missing)}")
        self.conds = {p: {k: v.float() for k, v in c.items()} for p, c in conds.items()}
        self.source = source

    def get(self, prompt: str) -> Cond:
        if prompt not in self.conds:
            known = ", ".join(repr(p) for p in list(self.conds)[:5])
            raise EmbeddingsError(f"{self.source}: no embedding for the prompt {prompt!r} (it has {known})")
        return self.conds[prompt]

    def require(self, prompts) -> None:
        """Raise EmbeddingsError naming the prompts the file lacks (checked before training starts)."""
        missing = sorted({p for p in prompts if p not in self.conds})
        if missing:
            raise EmbeddingsError(f"{self.source}: no embeddings for {len(missing)} prompt(s) trained on, e.g. {missing[:3]}")


def training_prompts(captions: Sequence[str | None], instance_prompt: str, class_prompt: str = "",
                     validation_prompt: str | None = None, previews: bool = False, dropout: bool = False) -> list[str]:
    """The prompts a training run encodes, in order, each once: every image's caption (the instance
    prompt for an image without one), the class prompt (class images, generated or given), and with
    previews the validation prompt (default the instance prompt) and "" (guidance; class-image
    generation and caption dropout need "" too)."""
    prompts = [c or instance_prompt for c in captions] or [instance_prompt]
    if class_prompt.strip():
        prompts.append(class_prompt)
    if previews:
        prompts.append(validation_prompt or instance_prompt)
    if previews or dropout or class_prompt.strip():
        prompts.append("")
    return list(dict.fromkeys(prompts))


def save_embeddings(path: str | os.PathLike, conds: Mapping[str, Cond], overwrite: bool = False) -> str:
    prompts = list(conds)
    tensors = {f"{i}.{k}": v.detach().float().cpu().contiguous() for i, p in enumerate(prompts) for k, v in conds[p].items()}
    return atomic.write_safetensors(str(path), tensors, {PROMPTS_KEY: json.dumps(prompts)}, overwrite=overwrite)


def load_embeddings(path: str | os.PathLike) -> EmbeddingTable:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            prompts = json.loads((fh.metadata() or {}).get(PROMPTS_KEY, "null"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (OSError, SafetensorError, ValueError) as exc:
        raise EmbeddingsError(f"{path}: not a readable embeddings file ({exc})") from None
    if not isinstance(prompts, list):
        raise EmbeddingsError(f"{path}: no {PROMPTS_KEY} metadata (a JSON list of the prompts)")
    conds: dict[str, Cond] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= len(prompts):
            raise EmbeddingsError(f"{path}: key {key!r} is not <prompt index>.<name> of one of its {len(prompts)} prompts")
        conds.setdefault(prompts[int(index)], {})[name] = value
    return EmbeddingTable(conds, str(path))

"""The interface every model family implements, in the spirit of ComfyUI's `weight_adapter/`
(one file per algorithm, one base class) and spandrel (architecture detected from state-dict keys).

A family answers, for one kind of base model: is this state dict mine (`match`), how are my
modules named in every form the pack reads and writes (kohya adapter names, diffusers and ldm
paths, single-file checkpoint keys, ComfyUI's model names), which layers are adapted by default,
how is it trained (the objective, resolution, steps) and what a file for it records in metadata.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch

from ..naming.clip import WeightSlot

Shapes = Mapping[str, Sequence[int]]


class FamilyError(ValueError):
    """A model whose family cannot be told, or a name a family does not have."""


@dataclass(frozen=True)
class Match:
    """A family's claim on a state dict: higher scores are stronger evidence."""

    score: int
    evidence: str


@dataclass(frozen=True)
class Recipe:
    """A family's training defaults, the settings of the official DiffuseKronA scripts for it."""

    steps: int
    resolution: int  # bucket side in pixels
    crop: str  # "random" (chosen once per image, as the scripts' default) or "center"


#: a base of no known family: the paper's SD1.5 settings
GENERIC_RECIPE = Recipe(steps=500, resolution=512, crop="random")


class Family(ABC):
    """One base-model family (subclasses implement the methods; instances are the registry's entries)."""

    name: str  # what krona.base_model records: sd1, sd2, sdxl, …
    title: str
    prediction: str  # the training objective: "epsilon" or "v_prediction"
    default_resolution: int
    default_steps: int
    default_crop: str
    default_targets: str
    priority: int  # tie-break between equally strong matches (lower wins)
    comfy_model_types: frozenset[str]  # ComfyUI model_config class names of this family
    #: the real model's largest adaptable weight where it exceeds ops.limits.MAX_DELTA_ELEMENTS
    #: (FLUX.2's fused linear1, Wan 14B's time projection), else () — the bound a file of the family gets
    largest_weight: tuple[int, ...] = ()

    @property
    @abstractmethod
    def networks(self) -> tuple[str, ...]:
        """Adapter networks of the family: "unet" and its text encoders (te, or te1 + te2)."""

    @abstractmethod
    def match(self, shapes: Shapes) -> Match | None:
        """Whether a state dict (diffusers, single-file, ComfyUI or kohya-named; name → weight
        shape) is of this family, and on what evidence."""

    @abstractmethod
    def text_encoder_network(self, width: int) -> str | None:
        """The network name of a text encoder of this family with this hidden width."""

    @abstractmethod
    def kohya_name(self, network: str, module_path: str, unet_map=None) -> str:
        """kohya adapter name of a module, in the path style kohya writes for this family."""

    @abstractmethod
    def dotted_path(self, underscored: str) -> str:
        """The diffusion model's module path of its fully underscored diffusers form (LyCORIS's
        `lycoris_…` names, OneTrainer's `lora_transformer_…`, the prefix removed), dotted where the
        family's naming needs the dots; a KeyMapError when it is not a path of the family."""

    @abstractmethod
    def checkpoint_slot(self, network: str, param_key: str, unet_map=None) -> WeightSlot:
        """Where a parameter lives in a single-file checkpoint of this family."""

    @abstractmethod
    def checkpoint_modules(self, shapes: Shapes) -> dict[str, tuple[WeightSlot, tuple[int, ...]]]:
        """{kohya module name: (where its weight lives, its shape)} of a single-file checkpoint."""

    @abstractmethod
    def metadata(self) -> dict[str, str]:
        """The `ss_*` / `modelspec.*` strings a file for this family carries."""

    @abstractmethod
    def matches_ss(self, ss_base_model_version: str) -> bool:
        """Whether a kohya `ss_base_model_version` string names this family."""

    def fused_part(self, network: str, module_path: str):
        """(kohya name of the fused weight, its `naming.dit.Part`) when the module is a row slice of
        a fused weight of this family (a diffusers to_q of Flux's qkv); None when it is a whole weight."""
        return None

    def layout_map(self, names: Iterable[str]):
        """The diffusion model's block-layout map read off its module names, where the family's
        naming depends on the layout (the SD UNets' diffusers ↔ ldm map); None where it does not."""
        return None

    def weight_shapes(self, model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
        """{module path: weight shape} of the layers an adapter of this family sits on (Linear and
        ungrouped Conv2d of a model of this family; the transformer families' fused weights)."""
        return {n: tuple(m.weight.shape) for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.groups == 1)}

    @property
    def recipe(self) -> Recipe:
        """The training defaults (the one place a host or the job reads them from)."""
        return Recipe(self.default_steps, self.default_resolution, self.default_crop)

    def __repr__(self) -> str:
        return f"<family {self.name}>"

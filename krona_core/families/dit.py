"""What the diffusion-transformer families (Flux.1, Flux.2, Chroma, SD3, Qwen-Image, Lumina 2,
Z-Image, Wan) share: a flow-matching transformer whose adapter is named after ComfyUI's modules.

The naming rule, the same for every family (and the SD UNets): the network of the diffusion model
is "unet" and a module's kohya name is `lora_unet_<its path in ComfyUI's diffusion_model,
dots → underscores>`. ComfyUI's module paths are the original repositories' (BFL for Flux and
Chroma, SAI's MMDiT for SD3, Wan's, Alpha-VLLM's NextDiT for Lumina 2 and Z-Image, and the diffusers
ones for Qwen-Image); ComfyUI's LoraLoader maps that form for every architecture it loads, and it
is what kohya sd-scripts and musubi-tuner write. A fused original weight (Flux's `img_attn.qkv` and
`linear1`, SD3's `attn.qkv`, NextDiT's `attention.qkv`) is adapted as ONE Kronecker factor pair
over the whole fused weight, as ComfyUI's own Train LoRA node and kohya do; diffusers names that
are row slices of it (`to_q`, `to_k`, `to_v`, `proj_mlp`) are `Part`s (`naming.dit`), refused
as module names of a file and assembled into the fused ΔW when another trainer's file is converted.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from ..naming.clip import WeightSlot
from ..naming.dit import DiTKeyMap, Part, Rule, signature, strip_prefixes
from ..naming.kohya import KeyMapError, kohya_key
from .base import Family, FamilyError, Match, Shapes
from .flow import SigmaSampling

#: where single-file checkpoints of these families keep the diffusion model: ComfyUI-saved
#: checkpoints under `model.diffusion_model.`, the original releases and diffusion-model-only files bare
CHECKPOINT_PREFIXES: tuple[str, ...] = ("model.diffusion_model.", "diffusion_model.", "")


@dataclass(frozen=True)
class Signature:
    """Evidence of a family in a state dict: a key pattern (`naming.dit.signature`), its
    strength, and optionally a test of the weight's shape (rows vs columns of a fused qkv)."""

    dotted: str
    score: int
    qkv_ratio: tuple[int, int] | None = None  # rows:cols of the weight, when the pattern alone is shared

    def hit(self, key: str, shape) -> bool:
        if not signature(self.dotted).search(key):
            return False
        if self.qkv_ratio is None:
            return True
        return len(shape) == 2 and int(shape[0]) * self.qkv_ratio[1] == int(shape[1]) * self.qkv_ratio[0]


@dataclass(frozen=True, repr=False)
class DiTFamily(Family):
    name: str
    title: str
    priority: int
    diffusers_class: str  # diffusers class of the transformer (what a folder's config.json names)
    diffusers_config: dict[str, Any]  # its arguments for the real model (on top of the class defaults)
    rules: tuple[Rule, ...]  # diffusers → original paths (`naming.dit`)
    original_roots: frozenset[str]  # first components of the original module paths
    signatures: tuple[Signature, ...]
    comfy_model_types: frozenset[str]
    metadata_strings: dict[str, str]
    ss_prefix: str
    prediction: str = "flow"
    default_resolution: int = 1024
    default_steps: int = 1000
    default_crop: str = "random"
    default_targets: str = "attn"
    latent_channels: int = 16
    largest_weight: tuple[int, ...] = ()
    sigma_sampling: SigmaSampling | None = None  # σ draws of its reference trainers (`flow.py`); None: the host's own
    diffusers_pipeline: str = ""  # the diffusers pipeline class of its model_index.json (its text encoders' owner)

    # -- structure
    @property
    def networks(self) -> tuple[str, ...]:
        return ("unet",)

    def text_encoder_network(self, width: int) -> str | None:
        return None

    def key_map(self) -> DiTKeyMap:
        return _key_map(self.rules)

    def diffusers_name(self, network: str) -> str:
        if network != "unet":
            raise KeyMapError(f"{self.name} files adapt the diffusion model only, not {network!r}")
        return "transformer"

    def network_of_diffusers(self, name: str) -> str:
        if name not in ("unet", "transformer"):
            raise KeyMapError(f"{self.name}: only the transformer is adapted, not the diffusers component {name!r}")
        return "unet"

    # -- naming
    def original_path(self, module_path: str) -> tuple[str, Part | None]:
        """(ComfyUI / original module path, row part of a fused weight or None) of a module path in
        the original, ComfyUI (`diffusion_model.`), diffusers or PEFT (`transformer.`) form."""
        path = strip_prefixes(module_path)
        found = self.key_map().to_original(path)
        if found is not None:
            return found
        if path.split(".", 1)[0] in self.original_roots:
            return path, None
        raise KeyMapError(f"{module_path!r} is not a {self.title} module path (original or diffusers) this pack maps")

    def dotted_path(self, underscored: str) -> str:
        """The diffusers path a rule names (`transformer_blocks_0_attn_to_q` → `…blocks.0.attn.to_q`);
        else an original path under one of the family's roots, the root dotted off and the rest kept
        underscored (kohya names underscore it anyway: Qwen-Image's names are its diffusers ones)."""
        found = self.key_map().dotted(underscored)
        if found is not None:
            return found
        for root in sorted(self.original_roots, key=len, reverse=True):
            if underscored == root or underscored.startswith(root + "_"):
                return root + underscored[len(root):].replace("_", ".", 1)
        raise KeyMapError(f"{underscored!r} is not an underscored {self.title} module path (diffusers or original) "
                          "this pack maps")

    def fused_part(self, network: str, module_path: str) -> tuple[str, Part] | None:
        path, part = self.original_path(module_path)
        return (kohya_key("unet", path), part) if part is not None else None

    def kohya_name(self, network: str, module_path: str, unet_map=None) -> str:
        if network != "unet":
            raise KeyMapError(f"{self.name} files adapt the diffusion model only; {module_path!r} is a {network} module")
        path, part = self.original_path(module_path)
        if part is not None:
            raise KeyMapError(f"{module_path!r} is row block {part.index} of the fused {self.title} weight {path!r}; "
                              "KronA adapts the fused weight as one Kronecker factor pair (kohya name "
                              f"{kohya_key('unet', path)})")
        return kohya_key("unet", path)

    def checkpoint_slot(self, network: str, param_key: str, unet_map=None) -> WeightSlot:
        path, part = self.original_path(param_key.removesuffix(".weight"))
        if part is not None:
            raise KeyMapError(f"{param_key!r} is a row block of the fused weight {path}.weight")
        return WeightSlot(f"model.diffusion_model.{path}.weight")

    def checkpoint_modules(self, shapes: Shapes) -> dict[str, tuple[WeightSlot, tuple[int, ...]]]:
        """Every linear (2-D) and conv (4-D) weight of the diffusion model of a single-file
        checkpoint in the original / ComfyUI naming (bare, `diffusion_model.` or `model.diffusion_model.`)."""
        prefix = checkpoint_prefix(shapes, self.original_roots)
        if prefix is None:
            raise FamilyError(f"no {self.title} diffusion-model keys in the original (ComfyUI) naming: a diffusers-named "
                              "file is merged into its folder, not as a single-file checkpoint")
        out: dict[str, tuple[WeightSlot, tuple[int, ...]]] = {}
        for key, raw in shapes.items():
            shape = tuple(int(d) for d in raw)
            if key.startswith(prefix) and key.endswith(".weight") and len(shape) in (2, 4):
                path = key[len(prefix): -len(".weight")]
                if path.split(".", 1)[0] in self.original_roots:
                    out[kohya_key("unet", path)] = (WeightSlot(key), shape)
        return out

    # -- detection
    def match(self, shapes: Shapes) -> Match | None:
        best: Match | None = None
        for key, shape in shapes.items():
            for sig in self.signatures:
                if (best is None or sig.score > best.score) and sig.hit(key, shape):
                    best = Match(sig.score, f"{self.title} key {key}")
        return best

    def matches_ss(self, ss_base_model_version: str) -> bool:
        return ss_base_model_version.startswith(self.ss_prefix)

    def metadata(self) -> dict[str, str]:
        return dict(self.metadata_strings)

    # -- the real transformer (meta device by default: every name and shape, no memory)
    def build_unet(self, device: str | torch.device = "meta", **overrides: Any) -> torch.nn.Module:
        cls = getattr(importlib.import_module("diffusers"), self.diffusers_class)
        with torch.device(device):
            return cls(**{**self.diffusers_config, **overrides})

    def weight_shapes(self, model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
        """{original path: weight shape} of every Linear of a diffusers transformer of this family,
        fused weights assembled from their parts (the weights ComfyUI's model has)."""
        rows: dict[str, dict[int, tuple[int, int]]] = {}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                try:
                    path, part = self.original_path(name)
                except KeyMapError:
                    continue
                out, cols = module.weight.shape
                rows.setdefault(path, {})[part.index if part else 0] = (int(out), int(cols))
        return {p: (sum(o for o, _ in blocks.values()), next(iter(blocks.values()))[1]) for p, blocks in rows.items()}


@lru_cache(maxsize=None)
def _key_map(rules: tuple[Rule, ...]) -> DiTKeyMap:
    return DiTKeyMap(rules)


def checkpoint_prefix(shapes: Shapes, roots: frozenset[str]) -> str | None:
    for prefix in CHECKPOINT_PREFIXES:
        if any(k.startswith(prefix) and k[len(prefix):].split(".", 1)[0] in roots for k in shapes):
            return prefix
    return None


def block_rules(diffusers_block: str, original_block: str, table: tuple[tuple[str, str, Part | None], ...]) -> tuple[Rule, ...]:
    """Rules of one kind of block: (diffusers member, original member, part) under the two block paths."""
    return tuple(Rule(f"{diffusers_block}.{{i}}.{d}", f"{original_block}.{{i}}.{o}", part) for d, o, part in table)


def qkv_parts(sizes: tuple[int, ...] = (1, 1, 1)) -> tuple[Part, ...]:
    return tuple(Part(i, sizes) for i in range(len(sizes)))


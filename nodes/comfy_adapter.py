"""KronA as one of ComfyUI's own weight adapters (comfy.weight_adapter): merge-mode patches,
ComfyUI's bypass machinery (`h`), its loader interface (`load`) and its Train LoRA node
(`create_train` / `to_train`, registered as algorithm "KronA" where the host has `adapter_maps`).

The math is krona_core's: the patch is kron(w1, w2) formed in float32 and cast once (ComfyUI's
dynamic-VRAM and low-VRAM paths hand adapters fp16/bf16 weights and intermediates), the bypass is
krona_core's one Kronecker bypass forward.
"""

from __future__ import annotations

import logging

import comfy.model_management
import torch
from comfy.weight_adapter.base import WeightAdapterBase, WeightAdapterTrainBase

from ..krona_core.ops.bypass import ConvSpec, kron_delta
from ..krona_core.ops.matmul import materialise
from ..krona_core.ops.shapes import choose_shape

log = logging.getLogger("ComfyUI-KronA")
PAPER_FACTORS = (64, 8)  # a1, a2 of new adapters (DiffuseKronA's default)
_NOT_FULL_FACTORS = ("lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "row_offset")


def _delta32(w1: torch.Tensor, w2: torch.Tensor, device) -> torch.Tensor:
    cast = comfy.model_management.cast_to_device
    return materialise(cast(w1, device, torch.float32), cast(w2, device, torch.float32))


def _bypass_conv(adapter) -> ConvSpec | None:
    """The conv parameters ComfyUI's BypassForwardHook set on the adapter (None for linear layers)."""
    if not getattr(adapter, "is_conv", False):
        return None
    kw = getattr(adapter, "kw_dict", {})
    if getattr(adapter, "conv_dim", 2) != 2 or kw.get("groups", 1) != 1:
        raise ValueError(f"KronA adapts Linear and ungrouped Conv2d layers, not a {adapter.conv_dim}-d conv with "
                         f"{kw.get('groups', 1)} groups")
    return ConvSpec(tuple(kw.get("stride", (1, 1))), kw.get("padding", (0, 0)), tuple(kw.get("dilation", (1, 1))))


def _h(adapter, w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
    conv = _bypass_conv(adapter)
    delta = kron_delta(x, w1, w2, conv, float(getattr(adapter, "multiplier", 1.0)))
    if delta.shape != base_out.shape:
        raise ValueError(f"KronA bypass: the factors give an output of {list(delta.shape)}, the layer's is "
                         f"{list(base_out.shape)}")
    return delta.to(base_out.dtype)


class KronAWeightAdapter(WeightAdapterBase):
    """W ← W + function(strength · kron(w1, w2)) for one weight."""

    name = "krona"

    def __init__(self, loaded_keys: set[str], weights: tuple[torch.Tensor, torch.Tensor]):
        # (loaded_keys, weights) is the constructor ComfyUI itself calls when it rebuilds adapters
        # around prefetched weights (dynamic VRAM): all state lives in `weights`
        self.loaded_keys = loaded_keys
        self.weights = weights

    @classmethod
    def load(cls, x: str, lora: dict[str, torch.Tensor], alpha: float, dora_scale: torch.Tensor | None,
             loaded_keys: set[str] | None = None) -> "KronAWeightAdapter | None":
        """A full-factor Kronecker module `x` of a LoKr-keyed file (decomposed, DoRA or row-offset
        LoKr modules are left to ComfyUI's own LoKr adapter)."""
        w1, w2 = lora.get(f"{x}.lokr_w1"), lora.get(f"{x}.lokr_w2")
        if w1 is None or w2 is None or w1.dim() != 2 or dora_scale is not None:
            return None
        if any(f"{x}.{part}" in lora for part in _NOT_FULL_FACTORS):
            return None
        keys = set(loaded_keys or ()) | {f"{x}.lokr_w1", f"{x}.lokr_w2"}
        return cls(keys, (w1, w2))

    @classmethod
    def create_train(cls, weight: torch.Tensor, rank: int = 1, alpha: float = 1.0) -> "KronADiff":
        """A fresh trainable KronA for ComfyUI's Train LoRA node: the paper's (64, 8) factors with the
        divisor fallback (`rank` and `alpha` are LoRA notions and do not apply)."""
        return KronADiff.fresh(tuple(weight.shape))

    def to_train(self) -> "KronADiff":
        return KronADiff(*self.weights)

    def calculate_shape(self, key):
        return None  # ΔW has the weight's own shape

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        # float32 whatever intermediate_dtype is, cast once: exact in the fp16/bf16 paths too
        delta = _delta32(self.weights[0], self.weights[1], weight.device).reshape(weight.shape) * strength
        weight += function(delta.to(weight.dtype))
        return weight

    def h(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """The bypass component ΔW·x (ComfyUI's BypassForwardHook sets multiplier, is_conv, kw_dict)."""
        return _h(self, self.weights[0], self.weights[1], x, base_out)


class KronADiff(WeightAdapterTrainBase):
    """A trainable KronA for ComfyUI's trainer; parameter names are LoKr's, so the LoRA files the
    trainer saves (`<module>.lokr_w1` / `.lokr_w2`) load in every LoKr loader."""

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor):
        super().__init__()
        self.lokr_w1 = torch.nn.Parameter(w1.detach().float().clone())
        self.lokr_w2 = torch.nn.Parameter(w2.detach().float().clone())

    @classmethod
    def fresh(cls, weight_shape: tuple[int, ...]) -> "KronADiff":
        shape = choose_shape(weight_shape, *PAPER_FACTORS)
        # the paper's init: the a1×a2 factor ~ N(0, (1/a1)²), the other zero, so ΔW = 0 at step 0
        return cls(torch.randn(shape.w1_shape) / shape.a1, torch.zeros(shape.w2_shape))

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        return w + materialise(self.lokr_w1, self.lokr_w2).reshape(w.shape).to(w)

    def h(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        return _h(self, self.lokr_w1, self.lokr_w2, x, base_out)

    def passive_memory_usage(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())


def register() -> None:
    """Offer KronA to ComfyUI's own Train LoRA node (feature check: hosts with `adapter_maps`).

    Not added to `comfy.weight_adapter.adapters`: that list decides how ComfyUI's LoraLoader reads
    every LoKr-keyed file, and its own LoKr adapter already applies KronA files exactly."""
    import comfy.weight_adapter as weight_adapter

    maps = getattr(weight_adapter, "adapter_maps", None)
    if isinstance(maps, dict):
        maps.setdefault("KronA", KronAWeightAdapter)
    else:
        log.info("this ComfyUI has no comfy.weight_adapter.adapter_maps: KronA is not offered to Train LoRA")

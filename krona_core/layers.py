"""KronA adapters on nn.Linear / nn.Conv2d of any torch model.

An adapter is attached with a forward hook on the original module: the model's module tree and
state-dict keys stay exactly as they were (so a host can keep addressing weights by name), and
removing the hook restores the original forward. The adapter parameters live in a separate
`KronANetwork` (the handle returned by `attach`), which is what an optimizer trains and what
`save` writes.
"""

from __future__ import annotations

import math
import re
import warnings
import weakref
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import keymap
from .kron import KronShape, choose_order, choose_shape, kron_conv2d, kron_linear, kron_linear_add, lycoris_shape, materialise, plan_budget
from .targets import select


class KronAAdapter(nn.Module):
    """ΔW = strength · kron(w1, w2) for one base layer; efficient forward, never materialised."""

    def __init__(
        self,
        base: nn.Module,
        shape: KronShape,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        weight = base.weight
        if tuple(weight.shape) != shape.weight_shape:
            raise ValueError(f"factor shapes {shape.w1_shape}·{shape.w2_shape} give {shape.weight_shape}, layer weight is {tuple(weight.shape)}")
        if dtype is None:
            dtype = weight.dtype if weight.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float32
        device = weight.device if weight.device.type != "meta" else torch.device("cpu")
        self.shape = shape
        self.kind = "conv2d" if isinstance(base, nn.Conv2d) else "linear"
        # paper init: the a1×a2 factor ~ N(0, (1/a1)²), the b1×b2 factor zero, so ΔW = 0 at step 0
        w1 = torch.randn(shape.w1_shape, generator=generator, dtype=torch.float32) / shape.a1
        self.w1 = nn.Parameter(w1.to(device=device, dtype=dtype))
        self.w2 = nn.Parameter(torch.zeros(shape.w2_shape, device=device, dtype=dtype))
        self.order = choose_order(shape)
        self.mode = "efficient"  # or "materialised": x through kron(w1, w2) formed explicitly (benchmarks)
        self.strength = 1.0
        self.merged = False
        self.enabled = True
        if self.kind == "conv2d":
            self._conv = dict(stride=base.stride, padding=base.padding, dilation=base.dilation)
            self._padding_mode = base.padding_mode
            self._pad = getattr(base, "_reversed_padding_repeated_twice", None)

    def extra_repr(self) -> str:
        s = self.shape
        return f"w1={s.w1_shape}, w2={s.w2_shape}, kind={self.kind}, order={self.order}, strength={self.strength}"

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """strength · (x through kron(w1, w2)), computed in x's dtype on x's device."""
        w1 = self.w1.to(device=x.device, dtype=x.dtype)
        w2 = self.w2.to(device=x.device, dtype=x.dtype)
        if self.mode == "materialised":
            weight = materialise(w1, w2)
            if self.kind == "linear":
                y = F.linear(x, weight)
            elif self._padding_mode != "zeros":
                y = F.conv2d(F.pad(x, self._pad, mode=self._padding_mode), weight, None, self._conv["stride"], 0, self._conv["dilation"])
            else:
                y = F.conv2d(x, weight, None, **self._conv)
        elif self.kind == "linear":
            y = kron_linear(x, w1, w2, self.order)
        else:
            if self._padding_mode != "zeros":
                x = F.pad(x, self._pad, mode=self._padding_mode)
                y = kron_conv2d(x, w1, w2, self._conv["stride"], 0, self._conv["dilation"], self.order)
            else:
                y = kron_conv2d(x, w1, w2, order=self.order, **self._conv)
        return y * self.strength if self.strength != 1.0 else y

    def add_to(self, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """output + strength · ΔW·x, the hook's hot path (linear layers fold the strength into w1)."""
        if self.kind == "linear" and self.mode == "efficient":
            w1 = self.w1.to(device=x.device, dtype=x.dtype)
            w2 = self.w2.to(device=x.device, dtype=x.dtype)
            return kron_linear_add(output, x, w1, w2, self.strength, self.order)
        return output + self.delta(x).to(output.dtype)

    def delta_weight(self) -> torch.Tensor:
        """Materialised kron(w1, w2) (strength not applied)."""
        return materialise(self.w1, self.w2)

    def load_factors(self, w1: torch.Tensor, w2: torch.Tensor) -> None:
        if tuple(w1.shape) != tuple(self.w1.shape) or tuple(w2.shape) != tuple(self.w2.shape):
            raise ValueError(f"factor shapes {tuple(w1.shape)}, {tuple(w2.shape)} do not match {tuple(self.w1.shape)}, {tuple(self.w2.shape)}")
        with torch.no_grad():
            self.w1.copy_(w1)
            self.w2.copy_(w2)


# id(weight tensor) -> {id(handle): the tensor's version right after that handle's merge}
# (keyed by id: tensors compare elementwise, so they cannot be WeakKeyDictionary keys)
_MERGED_VERSIONS: dict[int, dict[int, int]] = {}


def _merged_versions(weight: torch.Tensor) -> dict[int, int]:
    key = id(weight)
    if key not in _MERGED_VERSIONS:
        _MERGED_VERSIONS[key] = {}
        weakref.finalize(weight, _MERGED_VERSIONS.pop, key, None)
    return _MERGED_VERSIONS[key]


def _module_key(path: str) -> str:
    # ModuleDict keys may not contain "."; "/" keeps the path readable and reversible
    return path.replace(".", "/")


class KronANetwork(nn.Module):
    """The handle of one attach(): adapters by module path, plus merge/unmerge/strength/remove.

    It is an nn.Module so `parameters()` feed an optimizer and `state_dict()` /
    `load_state_dict()` checkpoint the factors for exact resume.
    """

    def __init__(self, model: nn.Module, network: str | None, base: str | None):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.network = network
        self.base = base
        self._model_ref = [model]  # a list keeps the model out of this module's children
        self._hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._bases: dict[str, nn.Module] = {}
        self._paths: list[str] = []  # kept after remove(): the factors stay readable and savable
        self._backups: dict[str, tuple[torch.Tensor, int]] = {}  # path -> (weight before merge, its version)
        self._removed = False
        self.targets: list[str] = []
        self.rule: dict = {}
        self.unmatched: list[str] = []

    # -- bookkeeping
    @property
    def model(self) -> nn.Module:
        return self._model_ref[0]

    def paths(self) -> list[str]:
        return list(self._paths)

    def items(self) -> Iterator[tuple[str, KronAAdapter]]:
        for path in self._paths:
            yield path, self.adapters[_module_key(path)]

    def adapter(self, path: str) -> KronAAdapter:
        return self.adapters[_module_key(path)]

    def shapes(self) -> dict[str, KronShape]:
        return {path: a.shape for path, a in self.items()}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_live(self) -> None:
        if self._removed:
            raise RuntimeError("this KronA handle was removed from its model")

    def _add(self, path: str, base_module: nn.Module, adapter: KronAAdapter) -> None:
        self.adapters[_module_key(path)] = adapter
        self._bases[path] = base_module
        self._paths.append(path)

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
            if adapter.merged or not adapter.enabled:
                return output
            x = args[0] if args else kwargs["input"]
            return adapter.add_to(output, x)

        self._hooks[path] = base_module.register_forward_hook(hook, with_kwargs=True)

    # -- strength
    def set_strength(self, strength: float | Callable[[str], float], pattern: str | None = None) -> None:
        """Set ΔW's scale for all adapters (or those whose path matches the regex `pattern`).

        strength may be a function of the module path (per-block strengths). Merged adapters
        are re-merged at the new strength.
        """
        self._check_live()
        for path, adapter in self.items():
            if pattern is not None and not re.search(pattern, path):
                continue
            value = float(strength(path) if callable(strength) else strength)
            if not math.isfinite(value):
                raise ValueError(f"strength for {path} must be finite, got {value}")
            if adapter.merged:
                self._unmerge_one(path, adapter)
                adapter.strength = value
                self._merge_one(path, adapter, backup=True)
            else:
                adapter.strength = value

    @property
    def strength(self) -> float:
        values = {a.strength for _, a in self.items()}
        return values.pop() if len(values) == 1 else float("nan")

    def enable(self, enabled: bool = True) -> None:
        for _, adapter in self.items():
            adapter.enabled = enabled

    # -- merge
    @torch.no_grad()
    def _merge_one(self, path: str, adapter: KronAAdapter, backup: bool) -> None:
        weight = self._bases[path].weight
        version_before = weight._version
        saved = weight.detach().clone() if backup else None
        delta = adapter.delta_weight().to(device=weight.device, dtype=torch.float32) * adapter.strength
        weight.copy_((weight.float() + delta).to(weight.dtype))
        if saved is not None:
            self._backups[path] = (saved, version_before)
            _merged_versions(weight)[id(self)] = weight._version
        adapter.merged = True

    @torch.no_grad()
    def _unmerge_one(self, path: str, adapter: KronAAdapter) -> None:
        weight = self._bases[path].weight
        saved = self._backups.pop(path, None)
        versions = _merged_versions(weight)
        expected = versions.pop(id(self), None)
        if saved is not None and expected == weight._version:
            # untouched since our merge (tensor version counter unchanged): restore bit-identical
            weight.copy_(saved[0])
            # the weight is back to its state before our merge; a handle that merged just before
            # us expects that state under its old version number, now under the new one
            for key, version in versions.items():
                if version == saved[1]:
                    versions[key] = weight._version
        else:
            delta = adapter.delta_weight().to(device=weight.device, dtype=torch.float32) * adapter.strength
            weight.copy_((weight.float() - delta).to(weight.dtype))
        adapter.merged = False

    def merge(self, backup: bool = True) -> None:
        """Add strength·ΔW into the base weights; the hooks then pass through.

        backup keeps a copy of each original weight so that unmerge()/remove() restore it
        bit-identically (unless something else modified the weight since); without it,
        unmerge subtracts ΔW again (exact to floating-point rounding).
        """
        self._check_live()
        for path, adapter in self.items():
            if not adapter.merged:
                self._merge_one(path, adapter, backup)

    def unmerge(self) -> None:
        self._check_live()
        for path, adapter in self.items():
            if adapter.merged:
                self._unmerge_one(path, adapter)

    @property
    def merged(self) -> bool:
        return any(a.merged for _, a in self.items())

    def remove(self, keep_merged: bool = False) -> None:
        """Detach from the model. Merged weights are restored unless keep_merged (a permanent bake).

        The factors stay in the handle (save() and factors() still work); removing twice is a no-op.
        """
        if self._removed:
            return
        if not keep_merged:
            self.unmerge()
        for _, adapter in self.items():
            adapter.merged = False
        for hook in self._hooks.values():
            hook.remove()
        self._hooks.clear()
        self._backups.clear()
        self._bases.clear()
        self._removed = True

    # -- export
    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{kohya module name: (w1, w2)} with strength baked into w1, detached."""
        unet_map = None
        if self.network == "unet" and self.base in keymap.BASES:
            unet_map = keymap.UNetKeyMap.from_names(n for n, _ in self.model.named_modules() if n)
        out = {}
        for path, adapter in self.items():
            key = module_kohya_key(self.network, self.base, path, unet_map)
            out[key] = (adapter.w1.detach() * adapter.strength, adapter.w2.detach())
        return out

    def save(self, path: str, **metadata) -> str:
        """Write this handle's adapters to a .krona.safetensors file (see format.save)."""
        from .format import save

        metadata.setdefault("targets", self.targets)
        metadata.setdefault("factor_rule", self.rule)
        return save(path, [self], **metadata)


def module_kohya_key(network: str | None, base: str | None, path: str, unet_map: keymap.UNetKeyMap | None) -> str:
    """kohya name of a module path of a model being adapted (host prefixes stripped)."""
    if network is None:
        raise ValueError("cannot name adapters for a file: the handle's network (unet/te/te1/te2) is unknown")
    norm = normalize_path(network, path)
    if base in keymap.BASES:
        return keymap.kohya_module_key(base, network, norm, unet_map)
    return keymap.kohya_key(network, norm)


def normalize_path(network: str, path: str) -> str:
    """A module path in the style kohya names derive from.

    Strips host wrappers (`diffusion_model.` in ComfyUI, `clip_l.transformer.` and similar) and
    restores the `text_model.` root that transformers ≥ 5 no longer has in CLIPTextModel.
    """
    if network == "unet":
        for prefix in ("model.diffusion_model.", "diffusion_model."):
            if path.startswith(prefix):
                return path[len(prefix):]
        return path
    index = path.find("text_model.")
    if index >= 0:
        return path[index:]
    if path == "text_projection" or path.endswith(".text_projection"):
        return "text_projection"
    return "text_model." + path


def detect_network(model: nn.Module) -> tuple[str | None, str | None]:
    """(network, base) of a model from its module names and shapes, None where it cannot tell."""
    names = [n for n, _ in model.named_modules() if n]
    try:
        style = keymap.detect_naming(names)
    except keymap.KeyMapError:
        return None, None
    if style in ("diffusers", "ldm"):
        shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        return "unet", keymap.detect_base(shapes)
    # text encoder: width tells CLIP-L (sd1 / sdxl te1, ambiguous → sd1), OpenCLIP-H (sd2), bigG (sdxl te2)
    for n, m in model.named_modules():
        if n.endswith("self_attn.q_proj") and isinstance(m, nn.Linear):
            return {768: ("te", "sd1"), 1024: ("te", "sd2"), 1280: ("te2", "sdxl")}.get(m.in_features, ("te", None))
    return "te", None


def attach(
    model: nn.Module,
    a1: int = 64,
    a2: int = 8,
    targets: str | Sequence[str] = "attn",
    *,
    exclude: str | Sequence[str] | None = None,
    budget: int | None = None,
    shapes: Mapping[str, KronShape] | None = None,
    network: str | None = None,
    base: str | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = None,
    strength: float = 1.0,
    lycoris_compatible: bool = False,
) -> KronANetwork:
    """Add trainable KronA adapters to the matching Linear/Conv2d modules of `model`.

    Factor shapes come from (a1, a2) with the divisor fallback (`kron.choose_shape`), or from a
    total parameter `budget` (`kron.plan_budget`), or explicitly per module path (`shapes`,
    which also fixes the module set). `network`/`base` name the adapters in saved files
    (detected from the model when omitted). Factors follow each base layer's device and dtype
    unless `dtype` is given. lycoris_compatible picks square w1 factors of about a1 × a1 that
    LyCORIS's own loader can read back (`kron.lycoris_shape`); every host UI reads any shape.
    """
    detected_network, detected_base = detect_network(model)
    network = network or detected_network
    base = base or detected_base
    modules = dict(model.named_modules())
    if shapes is not None:
        missing = [p for p in shapes if p not in modules]
        if missing:
            raise ValueError(f"{len(missing)} module path(s) not in the model, e.g. {missing[:3]}")
        chosen = [(p, modules[p]) for p in shapes]
    else:
        chosen = select(model.named_modules(), targets, exclude)
    if not chosen:
        raise ValueError(f"no Linear/Conv2d module of {type(model).__name__} matches targets={targets!r}")
    weight_shapes = {p: tuple(m.weight.shape) for p, m in chosen}
    if shapes is not None:
        plan = dict(shapes)
    elif budget is not None:
        plan = plan_budget(weight_shapes, budget, a1, a2)
    elif lycoris_compatible:
        plan = {p: lycoris_shape(s, a1) for p, s in weight_shapes.items()}
    else:
        plan = {p: choose_shape(s, a1, a2) for p, s in weight_shapes.items()}
    for p, s in weight_shapes.items():
        if plan[p].weight_shape != s:
            raise ValueError(f"{p}: factor shapes give {plan[p].weight_shape}, layer weight is {s}")

    handle = KronANetwork(model, network, base)
    handle.targets = [targets] if isinstance(targets, str) else list(targets)
    if shapes is not None:
        handle.rule = {"mode": "explicit"}
    elif budget is not None:
        handle.rule = {"mode": "budget", "budget": int(budget), "a1": a1, "a2": a2}
    elif lycoris_compatible:
        handle.rule = {"mode": "lycoris", "factor": a1}
    else:
        handle.rule = {"mode": "factors", "a1": a1, "a2": a2}
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, module in chosen:
            adapter = KronAAdapter(module, plan[path], dtype=dtype, generator=generator)
            adapter.strength = float(strength)
            handle._add(path, module, adapter)
    return handle

"""KronA adapters on nn.Linear / nn.Conv2d of any torch model.

An adapter is attached with a forward hook on the original module: the model's module tree and
state-dict keys stay exactly as they were (so a host can keep addressing weights by name), and
removing the hook restores the original forward. One adapter of a fused weight whose rows several
modules compute (diffusers' `to_qkv` + `proj_mlp` of Flux's single-block `linear1`) hooks each of
them with its window of ΔW's rows (`ops.bypass.RowSlice`), so they train the one factor pair. The
adapter parameters live in a separate `KronANetwork` (the handle returned by `attach`), which is
what an optimizer trains and what `save` writes.
"""

from __future__ import annotations

import math
import re
import weakref
from typing import Callable, Iterator

import torch
import torch.nn as nn

from .. import families
from ..naming.kohya import kohya_key, normalize_path
from ..naming.unet import UNetKeyMap
from ..ops.bypass import ConvSpec, RowSlice, add_kron_delta, kron_delta
from ..ops.matmul import materialise
from ..ops.shapes import KronShape, choose_order


class KronAAdapter(nn.Module):
    """ΔW = strength · kron(w1, w2) for one base layer (or one fused weight whose rows `fused_rows`
    several layers like `base` compute); efficient forward, never materialised."""

    def __init__(
        self,
        base: nn.Module,
        shape: KronShape,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        fused_rows: int | None = None,
    ):
        super().__init__()
        weight = base.weight
        expected = (fused_rows or weight.shape[0], *weight.shape[1:])
        if tuple(expected) != shape.weight_shape:
            raise ValueError(f"factor shapes {shape.w1_shape}·{shape.w2_shape} give {shape.weight_shape}, layer weight is {tuple(expected)}")
        if dtype is None:
            dtype = weight.dtype if weight.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else torch.float32
        device = weight.device if weight.device.type != "meta" else torch.device("cpu")
        self.shape = shape
        self.conv = ConvSpec.of(base) if isinstance(base, nn.Conv2d) else None
        # paper init: the a1×a2 factor ~ N(0, (1/a1)²), the b1×b2 factor zero, so ΔW = 0 at step 0
        w1 = torch.randn(shape.w1_shape, generator=generator, dtype=torch.float32) / shape.a1
        self.w1 = nn.Parameter(w1.to(device=device, dtype=dtype))
        self.w2 = nn.Parameter(torch.zeros(shape.w2_shape, device=device, dtype=dtype))
        self.order = choose_order(shape)
        self.materialised = False  # benchmarks: x through kron(w1, w2) formed explicitly
        self.strength = 1.0
        self.merged = False
        self.enabled = True

    @property
    def kind(self) -> str:
        return "linear" if self.conv is None else "conv2d"

    def extra_repr(self) -> str:
        s = self.shape
        return f"w1={s.w1_shape}, w2={s.w2_shape}, kind={self.kind}, order={self.order}, strength={self.strength}"

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """strength · (x through kron(w1, w2)), computed in x's dtype on x's device."""
        return kron_delta(x, self.w1, self.w2, self.conv, self.strength, self.order, self.materialised)

    def add_to(self, output: torch.Tensor, x: torch.Tensor, window: RowSlice | None = None) -> torch.Tensor:
        """output + strength · ΔW·x (or that `window` of ΔW's rows), the hook's hot path (the
        strength rides on w1)."""
        return add_kron_delta(output, x, self.w1, self.w2, self.conv, self.strength, order=self.order,
                              materialised=self.materialised, window=window)

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


#: a module an adapter is hooked on, and the window of ΔW's rows it computes (None: all of them)
Site = tuple[nn.Module, RowSlice | None]


def _hook(adapter: KronAAdapter, window: RowSlice | None) -> Callable:
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        if adapter.merged or not adapter.enabled:
            return output
        x = args[0] if args else kwargs["input"]
        return adapter.add_to(output, x, window)

    return hook


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
        self._hooks: dict[str, list[torch.utils.hooks.RemovableHandle]] = {}
        self._sites: dict[str, list[Site]] = {}  # path -> the modules computing ΔW's rows (all, or a window each)
        self._paths: list[str] = []  # kept after remove(): the factors stay readable and savable
        self._backups: dict[tuple[str, int], tuple[torch.Tensor, int]] = {}  # (path, site) -> (weight before merge, its version)
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

    def _add(self, path: str, sites: list[Site], adapter: KronAAdapter) -> None:
        """Hook `adapter` on its base module (one site, window None) or on each module computing a
        window of its fused weight's rows."""
        self.adapters[_module_key(path)] = adapter
        self._sites[path] = sites
        self._paths.append(path)
        self._hooks[path] = [module.register_forward_hook(_hook(adapter, window), with_kwargs=True) for module, window in sites]

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
    @staticmethod
    def _scaled_delta(adapter: KronAAdapter) -> torch.Tensor:
        """strength · ΔW in float32 (all the fused weight's rows for a windowed adapter)."""
        return adapter.delta_weight().to(dtype=torch.float32) * adapter.strength

    @staticmethod
    def _rows(delta: torch.Tensor, window: RowSlice | None, weight: torch.Tensor) -> torch.Tensor:
        """The site's rows of ΔW (all of them without a window), on its weight's device."""
        rows = delta if window is None else delta[window.start:window.start + window.size]
        return rows.to(weight.device)

    @torch.no_grad()
    def _merge_one(self, path: str, adapter: KronAAdapter, backup: bool) -> None:
        delta = self._scaled_delta(adapter)
        for index, (module, window) in enumerate(self._sites[path]):
            weight = module.weight
            version_before = weight._version
            saved = weight.detach().clone() if backup else None
            weight.copy_((weight.float() + self._rows(delta, window, weight)).to(weight.dtype))
            if saved is not None:
                self._backups[(path, index)] = (saved, version_before)
                _merged_versions(weight)[id(self)] = weight._version
        adapter.merged = True

    @torch.no_grad()
    def _unmerge_one(self, path: str, adapter: KronAAdapter) -> None:
        delta = None  # formed only when a weight cannot be restored from its backup
        for index, (module, window) in enumerate(self._sites[path]):
            weight = module.weight
            saved = self._backups.pop((path, index), None)
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
                delta = self._scaled_delta(adapter) if delta is None else delta
                weight.copy_((weight.float() - self._rows(delta, window, weight)).to(weight.dtype))
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
        for hooks in self._hooks.values():
            for hook in hooks:
                hook.remove()
        self._hooks.clear()
        self._backups.clear()
        self._sites.clear()
        self._removed = True

    # -- export
    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{kohya module name: (w1, w2)} with strength baked into w1, detached."""
        family = families.find(self.base)
        unet_map = None
        if self.network == "unet" and family is not None:
            unet_map = family.layout_map(n for n, _ in self.model.named_modules() if n)
        out = {}
        for path, adapter in self.items():
            key = module_kohya_key(self.network, family, path, unet_map)
            out[key] = (adapter.w1.detach() * adapter.strength, adapter.w2.detach())
        return out

    def save(self, path: str, **metadata) -> str:
        """Write this handle's adapters to a .krona.safetensors file (see format.save)."""
        from ..files.writer import save

        metadata.setdefault("targets", self.targets)
        metadata.setdefault("factor_rule", self.rule)
        return save(path, [self], **metadata)




def module_kohya_key(network: str | None, family: families.Family | None, path: str, unet_map: UNetKeyMap | None) -> str:
    """kohya name of a module path of a model being adapted (host prefixes stripped)."""
    if network is None:
        raise ValueError("cannot name adapters for a file: the handle's network (unet/te/te1/te2) is unknown")
    if family is not None:
        return family.kohya_name(network, path, unet_map)
    return kohya_key(network, normalize_path(network, path))

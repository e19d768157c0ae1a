"""LoKr modules as every trainer writes them, read into exact module kinds.

The factors (LyCORIS names, used by kohya, LyCORIS, SimpleTuner, ai-toolkit, OneTrainer, ComfyUI's
trainer and PEFT alike): `lokr_w1` or `lokr_w1_a` · `lokr_w1_b`; `lokr_w2` or `lokr_w2_a` · `lokr_w2_b`
(Tucker: `lokr_t2` with `lokr_w2_a` / `lokr_w2_b`). What differs between trainers is the scale:

- LyCORIS rule (`alpha` tensor in the file): alpha / dim for a decomposed half, dim = that half's
  rank (the w2 rank when both are decomposed); 1 when both halves are full — as ComfyUI's
  `LoKrAdapter.calculate_weight`, A1111/Forge and LyCORIS compute it;
- PEFT rule (`alpha` and `r` in adapter_config.json): alpha / r always (`LoKrLayer.scaling`).

Two extras of ComfyUI's LoKr reader (comfy/weight_adapter/lokr.py, `LoKrAdapter.load` and
`calculate_weight` of Comfy-Org/ComfyUI, 2026):
- `row_offset`: the product is a fused q/k/v module, applied to one projection as the row window
  [offset, offset + rows) — a Kronecker product again when the window is aligned to w2's rows;
- `dora_scale`: DoRA-LoKr, W' = (W + ΔW) · dora_scale / ‖W + ΔW‖ (norm per output row when
  dora_scale has one value per output, else per input column, as `weight_decompose` in
  comfy/weight_adapter/base.py) — it depends on the base weight, so it is applied, not converted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.limits import DeltaTooLarge, check_delta_shape
from ..ops.matmul import materialise
from ..ops.shapes import KronShape
from .errors import ConvertError
from .kinds import Kronecker, SourceModule
from .reader_base import scalar

FACTORS = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
EXTRAS = ("alpha", "dora_scale", "row_offset")
PARTS = FACTORS + EXTRAS
Parts = dict[str, torch.Tensor]


def _half(parts: Parts, index: int, name: str, path: str) -> tuple[torch.Tensor, int | None]:
    """(w_index, its rank when decomposed); the product's size is checked before it is formed."""
    full, a, b = f"lokr_w{index}", f"lokr_w{index}_a", f"lokr_w{index}_b"
    if full in parts:
        return parts[full].double(), None
    if a not in parts or b not in parts:
        raise ConvertError(f"{path}: module {name} lacks its {full} (or {a} + {b})")
    wa, wb = parts[a].double(), parts[b].double()
    if index == 2 and "lokr_t2" in parts:  # Tucker: w2[p, r, k, l] = Σ t2[i, j, k, l] · b[j, r] · a[i, p]
        t2 = parts["lokr_t2"].double()
        if t2.dim() != 4 or wa.dim() != 2 or wb.dim() != 2 or t2.shape[:2] != (wa.shape[0], wb.shape[0]):
            raise ConvertError(f"{path}: module {name}: lokr_t2 {list(t2.shape)}, {a} {list(wa.shape)} and {b} "
                               f"{list(wb.shape)} are not a Tucker decomposition")
        _bounded((wa.shape[1], wb.shape[1], *t2.shape[2:]), name, path)
        return torch.einsum("ijkl,jr,ip->prkl", t2, wb, wa), wb.shape[0]
    if wa.dim() != 2 or wb.dim() not in (2, 4) or wa.shape[-1] != wb.shape[0]:
        raise ConvertError(f"{path}: module {name}: {a} {list(wa.shape)} and {b} {list(wb.shape)} do not multiply")
    _bounded((wa.shape[0], *wb.shape[1:]), name, path)
    return (wa @ wb.reshape(wb.shape[0], -1)).reshape(wa.shape[0], *wb.shape[1:]), wb.shape[0]


def _bounded(shape: tuple[int, ...], name: str, path: str) -> None:
    try:
        check_delta_shape(shape, f"{path}: module {name}")
    except DeltaTooLarge as exc:
        raise ConvertError(str(exc)) from None


def lokr_factors(parts: Parts, name: str, path: str, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(w1, w2) with ΔW = kron(w1, w2), the scale baked into w1; `scale` given: the PEFT rule,
    None: the LyCORIS rule from the module's own `alpha`."""
    w1, dim1 = _half(parts, 1, name, path)
    w2, dim2 = _half(parts, 2, name, path)
    if scale is None:
        dim = dim2 if dim2 is not None else dim1
        scale = scalar(parts["alpha"], name, "alpha", path) / dim if dim is not None and "alpha" in parts else 1.0
    if "alpha" in parts:
        scalar(parts["alpha"], name, "alpha", path)
    if w1.dim() != 2 or w2.dim() not in (2, 4) or 0 in w1.shape or 0 in w2.shape:
        raise ConvertError(f"{path}: module {name}: w1 {list(w1.shape)} / w2 {list(w2.shape)} are not LoKr factors")
    _bounded(KronShape.from_factors(w1.shape, w2.shape).weight_shape, name, path)
    return (w1 * scale).float(), w2.float()


def lokr_module(name: str, parts: Parts, path: str, scale: float | None = None) -> SourceModule:
    """The module kind of one LoKr module: Kronecker, a row window of one, or DoRA-LoKr."""
    w1, w2 = lokr_factors(parts, name, path, scale)
    window = _row_window(parts, w1, w2, name, path)
    if "dora_scale" in parts:
        full = KronShape.from_factors(w1.shape, w2.shape).weight_shape
        counts = {full[0], full[1], _window_shape(w1, w2, window)[0]}
        if parts["dora_scale"].numel() not in counts:
            raise ConvertError(f"{path}: module {name}: dora_scale {list(parts['dora_scale'].shape)} has neither one value "
                               f"per output row nor one per input column of the {list(full)} weight")
        return DoRAKronecker(name, w1, w2, parts["dora_scale"].float(), window)
    if window is None:
        return Kronecker(name, w1, w2)
    return KroneckerRows(name, w1, w2, *window)


def _row_window(parts: Parts, w1: torch.Tensor, w2: torch.Tensor, name: str, path: str) -> tuple[int, int] | None:
    """(offset, rows) of a fused-qkv product applied to one projection (ComfyUI's
    `fused_qkv_row_offset`: q takes `in` rows at 0, k and v `(out − in) / 2` rows after it)."""
    if "row_offset" not in parts:
        return None
    offset = int(scalar(parts["row_offset"], name, "row_offset", path))
    out, inner = w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]
    kv = (out - inner) // 2
    windows = {0: inner, inner: kv, inner + kv: kv}
    if kv <= 0 or offset not in windows:
        raise ConvertError(f"{path}: module {name}: row_offset {offset} is not the q, k or v rows of a fused "
                           f"{out}×{inner} product (expected one of {sorted(windows)})")
    return offset, windows[offset]


def _window_shape(w1: torch.Tensor, w2: torch.Tensor, window: tuple[int, int] | None) -> tuple[int, ...]:
    """Shape of the weight kron(w1, w2) adapts, or of its row window."""
    shape = KronShape.from_factors(w1.shape, w2.shape).weight_shape
    return shape if window is None else (window[1], *shape[1:])


@dataclass
class KroneckerRows(SourceModule):
    """Rows [offset, offset + rows) of kron(w1, w2)."""

    name: str
    w1: torch.Tensor
    w2: torch.Tensor
    offset: int
    rows: int

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return _window_shape(self.w1, self.w2, (self.offset, self.rows))

    def dense(self) -> torch.Tensor:
        return materialise(self.w1.double(), self.w2.double())[self.offset:self.offset + self.rows]

    def kronecker(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        b1 = self.w2.shape[0]
        if self.offset % b1 or self.rows % b1:
            return None  # the window cuts through w2's row blocks
        return self.w1[self.offset // b1:(self.offset + self.rows) // b1], self.w2


@dataclass
class DoRAKronecker(SourceModule):
    """DoRA-LoKr: not a fixed ΔW; `delta_on(W)` is what the hosts add to W at strength 1."""

    name: str
    w1: torch.Tensor
    w2: torch.Tensor
    dora_scale: torch.Tensor
    window: tuple[int, int] | None = None
    needs_base = True

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return _window_shape(self.w1, self.w2, self.window)

    def dense(self) -> torch.Tensor:
        raise ConvertError(f"{self.name}: a DoRA-LoKr module depends on the base weights; give the checkpoint "
                           "(convert/merge --checkpoint) or load the file in ComfyUI's or Forge's LoRA loader")

    def squared_norm(self) -> float:
        return float(self.w1.double().norm() ** 2 * self.w2.double().norm() ** 2)

    def delta_on(self, weight: torch.Tensor) -> torch.Tensor:
        diff = materialise(self.w1.double(), self.w2.double())
        scale = self.dora_scale.double()
        if self.window is not None:
            offset, rows = self.window
            diff = diff[offset:offset + rows]
            if scale.shape[0] != rows:
                scale = scale[offset:offset + rows]
        w = weight.double()
        calc = w + diff.reshape(w.shape)
        if scale.shape[0] == calc.shape[0]:  # one magnitude per output row (LyCORIS wd_on_out)
            norm = w.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
        else:  # one per input column (older DoRA files)
            norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1).reshape(1, -1, *[1] * (w.dim() - 2))
        norm = norm + torch.finfo(weight.dtype).eps
        return calc * (scale.reshape(norm.shape) / norm) - w

"""Conversions between KronA and the adapter files people already have.

Exact where the math allows — any LyCORIS LoKr variant is a scaled Kronecker product; a KronA or
an official DiffuseKronA module is an exact LoRA of rank rank(A)·rank(B) — and otherwise the error
is reported per layer and in total (nearest Kronecker product).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..files import atomic
from ..files.model import SUFFIX, KronAFile
from ..files.writer import build_metadata, write
from ..ops.nearest import kron_rearrange, nearest_kronecker
from ..ops.shapes import KronShape, choose_shape, plan_budget
from .errors import ConvertError
from .lora_math import lora_tensors
from .sources import Source, read_source

Progress = Callable[[int, int, str], None]  # (done, total, module name)


class ErrorTally:
    """Per-module relative errors and the total over all modules, √(Σ‖ΔW − fit‖²) / √(Σ‖ΔW‖²)."""

    def __init__(self):
        self.errors: dict[str, float] = {}
        self._squared_error = 0.0
        self._squared_norm = 0.0

    def add(self, name: str, rel_error: float, squared_norm: float) -> None:
        self.errors[name] = rel_error
        self._squared_norm += squared_norm
        self._squared_error += rel_error ** 2 * squared_norm

    @property
    def total(self) -> float:
        return math.sqrt(self._squared_error / self._squared_norm) if self._squared_norm > 0 else 0.0

    @property
    def worst(self) -> float:
        return max(self.errors.values(), default=0.0)


def fit_kronecker(dense: torch.Tensor, shape: KronShape) -> tuple[tuple[torch.Tensor, torch.Tensor], float, float]:
    """((w1, w2), relative error, ‖ΔW‖²) of the nearest Kronecker product at `shape`."""
    fit = nearest_kronecker(dense, shape.a1, shape.a2)
    return (fit.w1[0].float(), fit.w2[0].float()), fit.rel_error, float((dense ** 2).sum())


def nearest_error_cost(dense: torch.Tensor) -> Callable[[KronShape], float]:
    """Absolute squared nearest-Kronecker error of a ΔW for a candidate shape (exact, via the
    Gram matrix of the Van Loan–Pitsianis rearrangement)."""
    total = float((dense ** 2).sum())
    cache: dict[tuple[int, int], float] = {}

    def cost(shape: KronShape) -> float:
        key = (shape.a1, shape.a2)
        if key not in cache:
            r = kron_rearrange(dense, shape.a1, shape.a2)
            gram = r @ r.T if r.shape[0] <= r.shape[1] else r.T @ r
            cache[key] = max(total - float(torch.linalg.eigvalsh(gram)[-1]), 0.0)
        return cache[key]

    return cost


@dataclass
class Conversion:
    file: KronAFile
    errors: dict[str, float]  # per module: ‖ΔW − kron‖ / ‖ΔW‖
    total_error: float  # over all modules: √(Σ‖ΔW − kron‖²) / √(Σ‖ΔW‖²)


def to_krona(source: Source, a1: int = 64, a2: int = 8, budget: int | None = None,
             progress: Progress | None = None) -> Conversion:
    """Exact for Kronecker sources (.krona, any LoKr); nearest Kronecker product otherwise."""
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    tally = ErrorTally()
    approx = {}
    for name, module in source.modules.items():
        factors = module.kronecker()
        if factors is None:
            approx[name] = module
            continue
        modules[name] = (factors[0].float(), factors[1].float())
        tally.add(name, 0.0, module.squared_norm())
    if approx:
        plan = _plan(approx, modules, a1, a2, budget)
        for index, (name, module) in enumerate(approx.items()):
            modules[name], rel_error, norm2 = fit_kronecker(module.dense(), plan[name])
            tally.add(name, rel_error, norm2)
            if progress:
                progress(index + 1, len(approx), name)
    provenance = {"source": os.path.basename(source.path), "source_sha256": source.sha256, "source_format": source.format,
                  "conversion": "exact" if not approx else ("budget" if budget else "nearest-kronecker"),
                  "total_rel_error": tally.total, "max_layer_rel_error": tally.worst}
    rule = ({"mode": "budget", "budget": budget, "a1": a1, "a2": a2} if budget else
            ({"mode": "factors", "a1": a1, "a2": a2} if approx else {"mode": "source"}))
    title = os.path.basename(source.path).split(".")[0]
    training = source.metadata.get("krona.training")
    metadata = build_metadata(modules, base_model=source.base, title=title, trigger_words=source.trigger_words,
                              factor_rule=rule, training=json.loads(training) if training else None, provenance=provenance)
    return Conversion(KronAFile(f"<memory>/{title}", modules, metadata), tally.errors, tally.total)


def _plan(approx: dict, exact: dict, a1: int, a2: int, budget: int | None) -> dict[str, KronShape]:
    shapes_of = {n: m.weight_shape for n, m in approx.items()}
    if budget is None:
        return {n: choose_shape(s, a1, a2) for n, s in shapes_of.items()}
    costs = {n: nearest_error_cost(m.dense()) for n, m in approx.items()}
    remaining = budget - sum(KronShape.from_factors(w1.shape, w2.shape).params for w1, w2 in exact.values())
    return plan_budget(shapes_of, remaining, a1, a2, cost=lambda n, s: costs[n](s))


def to_lora(source: Source, rank: int | None = None,
            progress: Progress | None = None) -> tuple[dict[str, torch.Tensor], dict[str, float], float]:
    """kohya LoRA tensors; exact at sufficient rank, else truncated with the error reported."""
    tensors: dict[str, torch.Tensor] = {}
    tally = ErrorTally()
    for index, (name, module) in enumerate(source.modules.items()):
        if progress:
            progress(index + 1, len(source.modules), name)
        up, down, rel = module.to_lora(rank)
        tensors.update(lora_tensors(name, up, down, module.weight_shape, torch.float32))
        tally.add(name, rel, module.squared_norm())
    return tensors, tally.errors, tally.total


@dataclass
class Report:
    """What a conversion or merge did, as the lines the CLI prints and the web UI shows."""

    path: str
    lines: list[str] = field(default_factory=list)

    def error_lines(self, errors: dict[str, float], total: float) -> None:
        worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
        self.lines.append(f"relative error: total {total:.3e}, max layer {max(errors.values(), default=0.0):.3e} "
                          f"over {len(errors)} modules")
        self.lines += [f"  {err:.3e}  {name}" for name, err in worst if err > 0]

    def factor_line(self, modules: dict[str, tuple[torch.Tensor, torch.Tensor]], asked: tuple[int, int] | None) -> None:
        """The (a1, a2) each module got — the nearest divisors where the asked ones do not divide."""
        used = Counter(tuple(w1.shape) for w1, _ in modules.values())
        line = "factors (a1, a2): " + ", ".join(f"({a}, {b}) ×{n}" for (a, b), n in sorted(used.items()))
        if asked is not None and set(used) != {asked}:
            line += f" (asked {asked}; a layer takes the nearest factors that divide it)"
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def check_output(path: str) -> None:
    """Before any work: the output must be new, in a folder that exists."""
    if os.path.lexists(path):
        raise ConvertError(f"{path} exists; nothing was overwritten")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConvertError(f"{path}: the folder {folder} does not exist (or is not a folder)")


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, to: str | None = None, a1: int = 64, a2: int = 8,
                 budget: int | None = None, rank: int | None = None, base: str | None = None,
                 float32: bool = False, checkpoint: str | os.PathLike | None = None,
                 progress: Progress | None = None) -> Report:
    """Convert one file: to KronA (`*.krona.safetensors`, or to="krona"), a kohya LoRA ("lora")
    or a materialised ΔW ("diff", LyCORIS full). Never overwrites. DoRA modules, whose change
    depends on the base, need the base `checkpoint` they are converted for. progress(done, total,
    module) per module that takes computing (fits and SVDs)."""
    src, dst = os.fspath(src), os.fspath(dst)
    target = to or ("krona" if dst.endswith(SUFFIX) else None)
    if target not in ("krona", "lora", "diff"):
        raise ConvertError(f"{dst}: choose the output kind (--to krona|lora|diff) or name the output *{SUFFIX}")
    check_output(dst)
    for label, value in (("a1", a1), ("a2", a2), ("budget", budget), ("rank", rank)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConvertError(f"{label} must be a whole number ≥ 1, got {value!r}")
    dtype = torch.float32 if float32 else torch.float16
    if checkpoint is not None:
        from .merge import bind_base, checkpoint_naming

        family, unet_map = checkpoint_naming(checkpoint)
        source = bind_base(read_source(src, base or family, unet_map), checkpoint)
    else:
        source = read_source(src, base)
    report = Report(dst, [f"{src}: {source.format}, base {source.base or 'unknown'}, {len(source.modules)} modules"])
    if target == "krona":
        result = to_krona(source, a1, a2, budget, progress)
        write(dst, result.file.modules, result.file.metadata, dtype=dtype)
        report.error_lines(result.errors, result.total_error)
        fitted = json.loads(result.file.metadata["krona.factors"])["rule"].get("mode") == "factors"
        report.factor_line(result.file.modules, (a1, a2) if fitted else None)
        report.lines.append(f"wrote {dst}: {result.file.num_parameters():,} parameters")
    elif target == "lora":
        tensors, errors, total = to_lora(source, rank, progress)
        meta = {"ss_network_module": "networks.lora",
                "krona.provenance": json.dumps({"source_sha256": source.sha256, "source_format": source.format})}
        if source.base:
            meta["krona.base_model"] = source.base
        _write(dst, {k: v.to(dtype) for k, v in tensors.items()}, meta)
        report.error_lines(errors, total)
        ranks = sorted({v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")})
        report.lines.append(f"wrote {dst}: LoRA ranks {ranks[0]}…{ranks[-1]}")
    else:
        tensors = {f"{name}.diff": module.dense().to(dtype).contiguous() for name, module in source.modules.items()}
        _write(dst, tensors, {"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "full"}'})
        report.lines.append(f"wrote {dst}: exact ΔW of {len(tensors)} modules")
    return report


def _write(path: str, tensors: dict, metadata: dict[str, str]) -> None:
    try:
        atomic.write_safetensors(path, tensors, metadata)
    except FileExistsError:
        raise ConvertError(f"{path}: already exists; nothing was overwritten") from None

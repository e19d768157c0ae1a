"""What `info` shows of an adapter file that is not a KronA file: its format, base and, per
module, its kind (exact Kronecker product, row window, DoRA-LoKr, LoRA, dense) and shape."""

from __future__ import annotations

import math
from collections import Counter

from .kinds import Dense, Kronecker, LowRank, Official, SourceModule
from .lokr import DoRAKronecker, KroneckerRows
from .sources import Source

KIND_NAMES: dict[type, str] = {
    Kronecker: "kronecker", KroneckerRows: "kronecker rows", DoRAKronecker: "dora-lokr",
    LowRank: "lora", Dense: "dense", Official: "official",
}


def kind_name(module: SourceModule) -> str:
    return KIND_NAMES.get(type(module), type(module).__name__)


def module_rows(source: Source) -> list[dict]:
    """One record per module: name, kind, weight shape, exact as KronA or not, ‖ΔW‖ (None for DoRA,
    whose change depends on the base weight)."""
    rows = []
    for name in sorted(source.modules):
        module = source.modules[name]
        rows.append({"module": name, "kind": kind_name(module), "shape": list(module.weight_shape),
                     "exact_krona": module.kronecker() is not None,
                     "norm": None if module.needs_base else math.sqrt(module.squared_norm())})
    return rows


def describe_source(source: Source) -> str:
    kinds = Counter(kind_name(m) for m in source.modules.values())
    exact = sum(m.kronecker() is not None for m in source.modules.values())
    lines = [f"file:           {source.path}", f"format:         {source.format}",
             f"base model:     {source.base or 'unknown'}",
             f"trigger words:  {', '.join(source.trigger_words) or '(none)'}",
             f"modules:        {len(source.modules)} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); "
             f"{exact} convert to KronA exactly", ""]
    rows = module_rows(source)
    width = min(max((len(r["module"]) for r in rows), default=6), 80)
    lines.append(f"{'module':<{width}}  {'kind':<15} {'shape':>16}  {'|dW|':>9}")
    for r in rows:
        norm = "needs base" if r["norm"] is None else f"{r['norm']:9.4f}"
        lines.append(f"{r['module'][:width]:<{width}}  {r['kind']:<15} {'×'.join(map(str, r['shape'])):>16}  {norm:>9}")
    return "\n".join(lines)

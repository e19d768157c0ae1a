"""Per-block strength: scale an adapter differently in different parts of the denoiser.

Spec grammar (comma- or newline-separated `selector:value` pairs, case-insensitive):

    input:1.0, middle:0.5, output:0.8       whole block groups (SD/SDXL UNets)
    input4:0.2, output3-5:0                 one block or an inclusive range of block indices
    double_blocks:0.7, single_blocks0-9:1   any root module name (DiT-style models)
    default:0.5                             everything not matched otherwise (default 1.0)

Blocks are read from ldm-style weight keys as ComfyUI names them
(`diffusion_model.input_blocks.4.1.…` → group "input", index 4); diffusers-style keys are read
too (`down_blocks.1.…` counts as input, `mid_block` as middle, `up_blocks` as output, indexed
by their diffusers block number). A more specific selector (with an index) wins over a group;
among equals the later one wins.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_ALIASES = {
    "input": "input", "in": "input", "input_blocks": "input", "down": "input", "down_blocks": "input",
    "middle": "middle", "mid": "middle", "middle_block": "middle", "mid_block": "middle",
    "output": "output", "out": "output", "output_blocks": "output", "up": "output", "up_blocks": "output",
}
_SELECTOR = re.compile(r"^([a-z_]+?)_?(\d+)?(?:-(\d+))?$")


class BlockSpecError(ValueError):
    """A per-block strength string that cannot be parsed."""


@dataclass(frozen=True)
class _Rule:
    group: str
    low: int | None
    high: int | None
    value: float
    order: int


def _group_of(key: str) -> tuple[str | None, int | None]:
    parts = key.split(".")
    for prefix in (["model", "diffusion_model"], ["diffusion_model"]):
        if parts[: len(prefix)] == prefix:
            parts = parts[len(prefix):]
            break
    if not parts:
        return None, None
    root = parts[0]
    group = _ALIASES.get(root, root)
    index = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return group, index


class BlockStrengths:
    """Parsed spec: call with a weight key to get its multiplier."""

    def __init__(self, rules: list[_Rule], default: float):
        self.rules = rules
        self.default = default

    @classmethod
    def parse(cls, spec: str | None) -> "BlockStrengths":
        rules: list[_Rule] = []
        default = 1.0
        if not spec or not spec.strip():
            return cls(rules, default)
        for order, item in enumerate(p.strip() for p in re.split(r"[,\n;]", spec)):
            if not item:
                continue
            if ":" not in item:
                raise BlockSpecError(f"per-block strength {item!r}: expected selector:value, e.g. 'input:1.0, middle:0.5'")
            selector, value_text = (s.strip().lower() for s in item.rsplit(":", 1))
            try:
                value = float(value_text)
            except ValueError:
                raise BlockSpecError(f"per-block strength {item!r}: {value_text!r} is not a number") from None
            if not math.isfinite(value):
                raise BlockSpecError(f"per-block strength {item!r}: the value must be finite")
            if selector in ("default", "*", "all"):
                default = value
                continue
            match = _SELECTOR.match(selector.replace(".", "_"))
            if not match:
                raise BlockSpecError(f"per-block strength {item!r}: {selector!r} is not a block selector (input, middle, output, input4, output3-5, …)")
            name, low, high = match.groups()
            group = _ALIASES.get(name, name)
            lo = int(low) if low is not None else None
            hi = int(high) if high is not None else lo
            if lo is not None and hi < lo:
                raise BlockSpecError(f"per-block strength {item!r}: empty range {lo}-{hi}")
            rules.append(_Rule(group, lo, hi, value, order))
        return cls(rules, default)

    def __call__(self, key: str) -> float:
        group, index = _group_of(key)
        best: tuple[int, int] | None = None
        value = self.default
        for rule in self.rules:
            if rule.group != group:
                continue
            if rule.low is not None and (index is None or not rule.low <= index <= rule.high):
                continue
            rank = (1 if rule.low is not None else 0, rule.order)
            if best is None or rank > best:
                best, value = rank, rule.value
        return value

    def describe(self) -> str:
        if not self.rules:
            return f"all blocks: {self.default:g}"
        parts = []
        for r in self.rules:
            where = r.group if r.low is None else f"{r.group}{r.low}" + (f"-{r.high}" if r.high != r.low else "")
            parts.append(f"{where}:{r.value:g}")
        return ", ".join(parts) + f" (default {self.default:g})"

    @property
    def is_uniform(self) -> bool:
        return not self.rules

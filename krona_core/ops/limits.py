"""The stated bound on what one request may materialise: a dense ΔW of one layer.

The largest weight a supported base adapts is SDXL's 1280·2560·3·3 ≈ 29.5 M-element conv
(attention/ff linears stay under 13.2 M); 2**26 ≈ 67 M elements leaves room for larger
families while capping one float64 ΔW at 512 MiB. Every path that forms a dense ΔW (convert,
merge, Merge KronA, LoRA to KronA, the A1111 API) checks this bound — and, when the target
model's real weight is known, that weight's shape — from the factors' shapes, before allocating.
"""

from __future__ import annotations

import math
from typing import Sequence

MAX_DELTA_ELEMENTS = 1 << 26


class DeltaTooLarge(ValueError):
    """A ΔW whose dense form would exceed the bound, or not match its target weight."""


def check_delta_shape(shape: Sequence[int], where: str, target: Sequence[int] | None = None) -> None:
    """Raise DeltaTooLarge when a ΔW of `shape` is over MAX_DELTA_ELEMENTS or, with `target`
    (the real weight it is added to), holds a different number of elements than that weight."""
    elements = math.prod(int(d) for d in shape)
    if target is not None and elements != math.prod(int(d) for d in target):
        raise DeltaTooLarge(f"{where}: the adapter describes a {list(shape)} weight, the model's weight is {list(target)}")
    if elements > MAX_DELTA_ELEMENTS:
        raise DeltaTooLarge(f"{where}: the adapter describes a {list(shape)} weight ({elements:,} elements), over the "
                            f"limit of {MAX_DELTA_ELEMENTS:,} elements for one layer")

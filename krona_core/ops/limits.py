"""The stated bound on what one request may materialise: a dense ΔW of one layer.

SD's largest adaptable weight is a 1280·2560·3·3 ≈ 29.5 M-element conv, FLUX.1's fused linear1
21504·3072 ≈ 66 M; 2**26 ≈ 67 M elements covers them while capping one float64 ΔW at 512 MiB.
Families whose real model has larger weights (FLUX.2, Wan 14B) raise the bound for their own
files to that weight (`Family.largest_weight`, `families.delta_limit`). Every path that forms a dense ΔW (convert,
merge, Merge KronA, LoRA to KronA, the A1111 API) checks this bound — and, when the target
model's real weight is known, that weight's shape — from the factors' shapes, before allocating.
"""

from __future__ import annotations

import math
from typing import Sequence

MAX_DELTA_ELEMENTS = 1 << 26


class DeltaTooLarge(ValueError):
    """A ΔW whose dense form would exceed the bound, or not match its target weight."""


def check_delta_shape(shape: Sequence[int], where: str, target: Sequence[int] | None = None,
                      limit: int = MAX_DELTA_ELEMENTS) -> None:
    """Raise DeltaTooLarge when a ΔW of `shape` is over `limit` elements (a family's bound:
    `families.delta_limit`) or, with `target` (the real weight it is added to), holds a different
    number of elements than that weight."""
    elements = math.prod(int(d) for d in shape)
    if target is not None:  # the model holds that weight already: its real shape is the bound
        if elements != math.prod(int(d) for d in target):
            raise DeltaTooLarge(f"{where}: the adapter describes a {list(shape)} weight, the model's weight is {list(target)}")
        return
    if elements > limit:
        raise DeltaTooLarge(f"{where}: the adapter describes a {list(shape)} weight ({elements:,} elements), over the "
                            f"limit of {limit:,} elements for one layer of its base")

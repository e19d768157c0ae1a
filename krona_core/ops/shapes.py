"""Kronecker factor shapes: the (a1, a2) rule with its divisor fallback, budgets, parameter and
FLOP counts.

Conventions (DESIGN.md): a weight W of shape (out, in[, k, k]) is adapted by
ΔW = kron(w1, w2) with w1 of shape (a1, a2) and w2 of shape (b1, b2[, k, k]),
a1·b1 = out, a2·b2 = in. For convolutions the kernel lives in w2 (LyCORIS LoKr layout).
Pure functions only: nothing here knows about modules, files or hosts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

Order = Literal["w2_first", "w1_first"]


@dataclass(frozen=True)
class KronShape:
    """Factor shapes of one adapted layer."""

    a1: int
    a2: int
    b1: int
    b2: int
    kernel: tuple[int, ...] = ()

    @property
    def out_features(self) -> int:
        return self.a1 * self.b1

    @property
    def in_features(self) -> int:
        return self.a2 * self.b2

    @property
    def w1_shape(self) -> tuple[int, int]:
        return (self.a1, self.a2)

    @property
    def w2_shape(self) -> tuple[int, ...]:
        return (self.b1, self.b2, *self.kernel)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features, *self.kernel)

    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel)

    @property
    def params(self) -> int:
        return self.a1 * self.a2 + self.b1 * self.b2 * self.kernel_numel

    def to_json(self) -> list[int]:
        """[a1, a2, b1, b2] — the per-layer record written to `krona.factors`."""
        return [self.a1, self.a2, self.b1, self.b2]

    @classmethod
    def from_factors(cls, w1_shape: Sequence[int], w2_shape: Sequence[int]) -> "KronShape":
        a1, a2 = (int(v) for v in w1_shape)
        b1, b2, *kernel = (int(v) for v in w2_shape)
        return cls(a1, a2, b1, b2, tuple(kernel))


# --------------------------------------------------------------------------- shape choice


def divisors(n: int) -> list[int]:
    """All positive divisors of n, ascending."""
    if n < 1:
        raise ValueError(f"divisors: expected a positive integer, got {n}")
    small, large = [], []
    d = 1
    while d * d <= n:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return small + large[::-1]


def nearest_divisor(n: int, target: int) -> int:
    """The divisor of n closest to target on a log scale (an exact tie is impossible: it would
    need d·d' = target² with d, d' | n, and then target itself divides n).

    The log scale makes "twice too big" and "half too small" equally far, which matches how
    a factor size changes the parameter count (multiplicatively). target itself is returned
    when it divides n; a target larger than n gives n.
    """
    if target < 1:
        raise ValueError(f"factor size must be ≥ 1, got {target}")
    if n % target == 0:
        return target
    return min(divisors(n), key=lambda d: abs(math.log(d / target)))


def choose_shape(weight_shape: Sequence[int], a1: int = 64, a2: int = 8) -> KronShape:
    """Factor shapes for a layer with weight (out, in[, k, k]) from the requested (a1, a2).

    Divisor fallback: when a1 does not divide out (or a2 does not divide in) the nearest
    divisor on a log scale is used instead (see `nearest_divisor`); the shapes actually used
    are what callers record per layer in the file metadata.
    """
    out_features, in_features, *kernel = (int(v) for v in weight_shape)
    fa1 = nearest_divisor(out_features, a1)
    fa2 = nearest_divisor(in_features, a2)
    return KronShape(fa1, fa2, out_features // fa1, in_features // fa2, tuple(kernel))


def lycoris_shape(weight_shape: Sequence[int], factor: int = 8) -> KronShape:
    """A factorisation LyCORIS's own file loader can rebuild: a square w1 of f × f.

    LyCORIS (and kohya sd-scripts through it) re-derives factor shapes from one integer
    `factor` when it loads a LoKr file, putting the smaller side of each dimension in w1, so it
    only accepts a family of shapes; ComfyUI, A1111 and Forge apply kron(w1, w2) of any shape.
    Here f is the divisor of gcd(out, in) nearest to `factor` with f² ≤ min(out, in).
    """
    out_features, in_features, *kernel = (int(v) for v in weight_shape)
    common = math.gcd(out_features, in_features)
    allowed = [d for d in divisors(common) if d * d <= min(out_features, in_features)]
    f = min(allowed, key=lambda d: abs(math.log(d / factor)))
    return KronShape(f, f, out_features // f, in_features // f, tuple(kernel))


def lycoris_loadable(shape: KronShape) -> bool:
    """Whether LyCORIS's loader rebuilds these exact factor shapes (see `lycoris_shape`)."""
    return shape.a1 == shape.a2 and shape.a1 <= shape.b1 and shape.a1 <= shape.b2


def candidate_shapes(weight_shape: Sequence[int], a1: int = 64, a2: int = 8) -> list[KronShape]:
    """One factorisation per achievable parameter count, ascending.

    The count a1·a2 + out·in·k²/(a1·a2) depends only on the product P = a1·a2, and P and
    out·in·k²/P give the same count; among equal counts the product closest to the requested
    a1·a2 wins, then the split closest to the requested a1:a2 aspect (the paper's 64:8 makes
    the first factor tall).
    """
    out_features, in_features, *kernel = (int(v) for v in weight_shape)
    aspect = math.log(a1 / a2)
    wanted = math.log(a1 * a2)
    best: dict[int, tuple[tuple[float, float], KronShape]] = {}
    for d1 in divisors(out_features):
        for d2 in divisors(in_features):
            shape = KronShape(d1, d2, out_features // d1, in_features // d2, tuple(kernel))
            score = (abs(math.log(d1 * d2) - wanted), abs(math.log(d1 / d2) - aspect))
            if shape.params not in best or score < best[shape.params][0]:
                best[shape.params] = (score, shape)
    return [best[p][1] for p in sorted(best)]


def _lower_hull(points: list[tuple[int, float, KronShape]]) -> list[tuple[int, float, KronShape]]:
    """Lower convex hull of (params, cost) points with cost strictly decreasing."""
    points = sorted(points, key=lambda p: (p[0], p[1]))
    hull: list[tuple[int, float, KronShape]] = []
    for p in points:
        if hull and p[1] >= hull[-1][1]:
            continue  # more parameters for no gain
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            # drop hull[-1] if it lies on or above the segment hull[-2] → p
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def plan_budget(
    layers: Mapping[str, Sequence[int]],
    budget: int,
    a1: int = 64,
    a2: int = 8,
    cost: Callable[[str, KronShape], float] | None = None,
) -> dict[str, KronShape]:
    """Per-layer factor shapes whose total parameter count is at most `budget`.

    Multiple-choice knapsack solved by its Lagrangian relaxation: each layer starts at its
    cheapest factorisation and upgrades (along the lower convex hull of its (params, cost)
    candidates) are taken in order of cost reduction per added parameter, across all layers,
    until the next one would exceed the budget. Consequences: the total never exceeds the
    budget, and every layer's choice (hence its cost) is monotone in the budget — a larger
    budget never makes any layer worse.

    cost(name, shape) scores a candidate (lower is better). The default, −w·log(params) with w
    the layer's parameter count under the (a1, a2) rule, gives each layer a share of the budget
    proportional to what the (a1, a2) rule would give it: the budget scales the paper's
    allocation. Converters pass the actual nearest-Kronecker error of the matrix they compress.
    """
    if not layers:
        return {}
    if cost is None:
        weights = {name: choose_shape(shape, a1, a2).params for name, shape in layers.items()}

        def cost(name: str, shape: KronShape) -> float:
            return -weights[name] * math.log(shape.params)

    hulls: dict[str, list[tuple[int, float, KronShape]]] = {}
    for name, weight_shape in layers.items():
        points = [(s.params, float(cost(name, s)), s) for s in candidate_shapes(weight_shape, a1, a2)]
        hulls[name] = _lower_hull(points)

    chosen = {name: 0 for name in hulls}
    total = sum(h[0][0] for h in hulls.values())
    if total > budget:
        raise ValueError(
            f"parameter budget {budget:,} is below the minimum of {total:,} for these "
            f"{len(layers)} layers (every layer at its smallest factorisation)"
        )
    upgrades = []
    for name, hull in hulls.items():
        for i in range(1, len(hull)):
            d_params = hull[i][0] - hull[i - 1][0]
            d_cost = hull[i][1] - hull[i - 1][1]
            upgrades.append((d_cost / d_params, name, i, d_params))
    # hull slopes increase along each layer, so sorting keeps each layer's upgrades in order
    upgrades.sort(key=lambda u: (u[0], u[1], u[2]))
    for _slope, name, i, d_params in upgrades:
        if total + d_params > budget:
            break
        chosen[name] = i
        total += d_params
    return {name: hulls[name][i][2] for name, i in chosen.items()}


# --------------------------------------------------------------------------- counters


def lora_params(weight_shape: Sequence[int], rank: int) -> int:
    """Parameters of a LoRA of `rank` on a weight (out, in[, k, k]) (down carries the kernel)."""
    out_features, in_features, *kernel = weight_shape
    return rank * (out_features + in_features * math.prod(kernel))


def choose_order(shape: KronShape) -> Order:
    """Cheaper association for the linear 3-matmul form, by multiply-adds per token.

    w2_first: (X·w2ᵀ) then w1·(…): a2·b2·b1 + a1·a2·b1
    w1_first: (w1·X) then (…)·w2ᵀ: a1·a2·b2 + a1·b2·b1
    """
    k = shape.kernel_numel
    w2_first = shape.a2 * shape.b1 * (shape.b2 * k + shape.a1)
    w1_first = shape.a1 * shape.b2 * (shape.a2 + shape.b1 * k)
    return "w2_first" if w2_first <= w1_first else "w1_first"


def kron_flops(shape: KronShape, tokens: int = 1, order: Order | None = None) -> int:
    """Multiply-add FLOPs (2 per MAC) of the efficient Kronecker product for `tokens` rows.

    For convolutions `tokens` is N·H_out·W_out and the input-side spatial size is taken equal
    to the output one (stride 1, same padding), the case of every SD conv but the downsamplers.
    """
    order = order or choose_order(shape)
    k = shape.kernel_numel
    if order == "w2_first":
        macs = shape.a2 * shape.b2 * k * shape.b1 + shape.a1 * shape.a2 * shape.b1
    else:
        macs = shape.a1 * shape.a2 * shape.b2 + shape.a1 * shape.b2 * k * shape.b1
    return 2 * macs * tokens


def lora_flops(weight_shape: Sequence[int], rank: int, tokens: int = 1) -> int:
    out_features, in_features, *kernel = weight_shape
    return 2 * rank * (out_features + in_features * math.prod(kernel)) * tokens

"""Kronecker factor math: factor shapes, the efficient Kronecker matmul, materialising,
nearest-Kronecker approximation, parameter and FLOP counts.

Conventions (DESIGN.md): a weight W of shape (out, in[, k, k]) is adapted by
ΔW = kron(w1, w2) with w1 of shape (a1, a2) and w2 of shape (b1, b2[, k, k]),
a1·b1 = out, a2·b2 = in. For convolutions the kernel lives in w2 (LyCORIS LoKr layout).
Pure functions only: nothing here knows about modules, files or hosts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F

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

    @property
    def max_rank(self) -> int:
        """Upper bound of rank(ΔW) viewed as an (out, in·k·k) matrix: rank(A ⊗ B) = rank A · rank B."""
        return min(self.a1, self.a2) * min(self.b1, self.b2 * self.kernel_numel)

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


def kron_params(shape: KronShape) -> int:
    return shape.params


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


def dense_flops(weight_shape: Sequence[int], tokens: int = 1) -> int:
    return 2 * math.prod(weight_shape) * tokens


# --------------------------------------------------------------------------- products


def materialise(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """ΔW = kron(w1, w2); for a conv w2 (b1, b2, k, k) the result is (out, in, k, k).

    torch.kron raises on non-contiguous inputs in torch 2.13 (e.g. a transposed factor),
    hence the .contiguous() calls.
    """
    w1 = w1.contiguous()
    w2 = w2.contiguous()
    if w2.dim() > w1.dim():
        w1 = w1.reshape(*w1.shape, *([1] * (w2.dim() - w1.dim())))
    return torch.kron(w1, w2)


def _w2_first(x2: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x2 through kron(w1, w2) as (N, a1·b1), T = X·w2ᵀ as (N, a2, b1)).

    T is one GEMM over N·a2 rows; the w1 side is a batched GEMM of w1 (broadcast, stride 0,
    never copied) against each token's (a2, b1) slice, which lands directly in the output layout.
    """
    n, (a1, a2), (b1, b2) = x2.shape[0], w1.shape, w2.shape
    t = (x2.reshape(n * a2, b2) @ w2.t()).reshape(n, a2, b1)
    return torch.bmm(w1.expand(n, a1, a2), t).reshape(n, a1 * b1), t


class _KronLinearW2First(torch.autograd.Function):
    """`_w2_first` with a backward of plain 2-D GEMMs.

    Autograd's own backward of the broadcast `bmm` runs per-token tiny GEMMs and, when the
    incoming gradient is strided (as it is behind attention's head reshapes), falls back to a
    per-token loop with a copy each: 3–4× slower per layer (bench/). Here the gradient is
    transposed once into (N·b1, a1) rows, after which every product is one GEMM.
    """

    @staticmethod
    def forward(ctx, x2: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        y, t = _w2_first(x2, w1, w2)
        ctx.save_for_backward(x2, w1, w2, t)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x2, w1, w2, t = ctx.saved_tensors
        n, (a1, a2), (b1, b2) = x2.shape[0], w1.shape, w2.shape
        grad_u = grad_y.reshape(n, a1, b1).transpose(1, 2).contiguous().reshape(n * b1, a1)  # rows (token, j)
        grad_x = grad_w1 = grad_w2 = None
        if ctx.needs_input_grad[1]:
            grad_w1 = grad_u.t() @ t.transpose(1, 2).reshape(n * b1, a2)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
            grad_t = (grad_u @ w1).reshape(n, b1, a2).transpose(1, 2).contiguous().reshape(n * a2, b1)
            if ctx.needs_input_grad[2]:
                grad_w2 = grad_t.t() @ x2.reshape(n * a2, b2)
            if ctx.needs_input_grad[0]:
                grad_x = (grad_t @ w2).reshape(n, a2 * b2)
        return grad_x, grad_w1, grad_w2


def _autocasting(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: one flag, for CUDA
        return device_type == "cuda" and torch.is_autocast_enabled()


def _kron_linear_parts(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, order: Order | None) -> torch.Tensor:
    """x through kron(w1, w2) as an (N, a1·b1) tensor.

    w2-first is the cheaper order for every SD attention layer at (64, 8): when a gradient is
    needed it runs as `_KronLinearW2First`, except under autocast, whose casts a custom backward
    would have to replay — there, and in the w1-first order, autograd differentiates the plain ops.
    """
    a1, a2 = w1.shape
    b1, b2 = w2.shape
    if x.shape[-1] != a2 * b2:
        raise ValueError(f"kron_linear: input has {x.shape[-1]} features, factors expect {a2}·{b2}={a2 * b2}")
    order = order or choose_order(KronShape(a1, a2, b1, b2))
    x2 = x.reshape(-1, a2 * b2)
    if order == "w2_first":
        needs_grad = torch.is_grad_enabled() and (x2.requires_grad or w1.requires_grad or w2.requires_grad)
        if needs_grad and not _autocasting(x.device.type):
            return _KronLinearW2First.apply(x2, w1, w2)
        return _w2_first(x2, w1, w2)[0]
    n = x2.shape[0]
    t = torch.bmm(w1.expand(n, a1, a2), x2.reshape(n, a2, b2))
    return (t.reshape(n * a1, b2) @ w2.t()).reshape(n, a1 * b1)


def kron_linear(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, order: Order | None = None) -> torch.Tensor:
    """x @ kron(w1, w2).T without forming the Kronecker product.

    With X = x.reshape(N, a2, b2): y = (w1 @ X @ w2ᵀ).reshape(N, a1·b1), in the association
    order with fewer multiply-adds (`choose_order`); autograd-safe.
    """
    return _kron_linear_parts(x, w1, w2, order).reshape(*x.shape[:-1], w1.shape[0] * w2.shape[0])


def kron_linear_add(base: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, scale: float = 1.0,
                    order: Order | None = None) -> torch.Tensor:
    """base + scale · (x @ kron(w1, w2).T), the adapter's hot path; the scale is folded into
    the small factor w1 instead of costing a pass over the output."""
    if scale != 1.0:
        w1 = w1 * scale
    return base + kron_linear(x, w1, w2, order).to(base.dtype)


def kron_conv2d(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    stride: int | tuple[int, int] = 1,
    padding: int | str | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    order: Order | None = None,
) -> torch.Tensor:
    """conv2d(x, kron(w1, w2)) with w2 of shape (b1, b2, k, k), without forming the product.

    The in-channels split into a2 groups of b2: each group is convolved by w2 (b2 → b1
    channels), then w1 mixes the a2 groups into a1 output groups — or w1 mixes first and the
    conv runs on a1 groups, whichever is fewer multiply-adds.
    """
    a1, a2 = w1.shape
    b1, b2, kh, kw = w2.shape
    n, c, h, w = x.shape
    if c != a2 * b2:
        raise ValueError(f"kron_conv2d: input has {c} channels, factors expect {a2}·{b2}={a2 * b2}")
    order = order or choose_order(KronShape(a1, a2, b1, b2, (kh, kw)))
    if order == "w2_first":
        z = F.conv2d(x.reshape(n * a2, b2, h, w), w2, None, stride, padding, dilation)
        ho, wo = z.shape[-2:]
        y = torch.matmul(w1, z.reshape(n, a2, b1 * ho * wo))
    else:
        t = torch.matmul(w1, x.reshape(n, a2, b2 * h * w))
        y = F.conv2d(t.reshape(n * a1, b2, h, w), w2, None, stride, padding, dilation)
        ho, wo = y.shape[-2:]
    return y.reshape(n, a1 * b1, ho, wo)


# --------------------------------------------------------------------------- nearest Kronecker


@dataclass
class KronApprox:
    """Best sum of `rank` Kronecker products: ΔW ≈ Σ_r kron(w1[r], w2[r])."""

    w1: torch.Tensor  # (rank, a1, a2)
    w2: torch.Tensor  # (rank, b1, b2[, k, k])
    rel_error: float  # ‖W − Σ‖_F / ‖W‖_F (0 for W = 0)
    singular_values: torch.Tensor

    def materialise(self) -> torch.Tensor:
        return sum(materialise(self.w1[r], self.w2[r]) for r in range(self.w1.shape[0]))


def kron_rearrange(weight: torch.Tensor, a1: int, a2: int) -> torch.Tensor:
    """Van Loan–Pitsianis rearrangement R[i·a2 + j, :] = W[i·b1:(i+1)·b1, j·b2:(j+1)·b2].ravel()."""
    out_features, in_features, *kernel = weight.shape
    if out_features % a1 or in_features % a2:
        raise ValueError(f"({a1}, {a2}) does not divide a weight of shape {tuple(weight.shape)}")
    b1, b2 = out_features // a1, in_features // a2
    blocks = weight.reshape(a1, b1, a2, b2, *kernel).transpose(1, 2)
    return blocks.reshape(a1 * a2, b1 * b2 * math.prod(kernel))


def nearest_kronecker(weight: torch.Tensor, a1: int, a2: int, rank: int = 1) -> KronApprox:
    """Best Frobenius-norm approximation of `weight` by a sum of `rank` Kronecker products.

    Top-`rank` SVD of the rearranged matrix (Van Loan & Pitsianis 1993). Each singular value
    is split evenly (√σ) between the two factors, so both are stored at similar magnitudes.
    The error is exact from the discarded singular values.
    """
    out_features, in_features, *kernel = weight.shape
    b1, b2 = out_features // a1, in_features // a2
    compute_dtype = torch.float64 if weight.device.type == "cpu" else torch.float32
    r = kron_rearrange(weight.detach().to(compute_dtype), a1, a2)
    u, s, vh = torch.linalg.svd(r, full_matrices=False)
    rank = min(rank, s.numel())
    root = s[:rank].sqrt()
    w1 = (u[:, :rank] * root).t().reshape(rank, a1, a2)
    w2 = (vh[:rank] * root[:, None]).reshape(rank, b1, b2, *kernel)
    total = float((s * s).sum())
    rest = float((s[rank:] * s[rank:]).sum())
    rel_error = math.sqrt(rest / total) if total > 0 else 0.0
    dtype = weight.dtype if weight.is_floating_point() else torch.float32
    return KronApprox(w1.to(dtype), w2.to(dtype), rel_error, s.to(torch.float32))

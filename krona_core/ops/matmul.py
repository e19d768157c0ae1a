"""The Kronecker product without forming it: x through kron(w1, w2) for linear and conv layers,
and the explicit product for merging.

Conventions (DESIGN.md): w1 (a1, a2), w2 (b1, b2[, k, k]); ΔW = kron(w1, w2) of shape
(a1·b1, a2·b2[, k, k]). Pure functions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .shapes import KronShape, Order, choose_order

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


def kron_linear_rows(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, start: int, size: int) -> torch.Tensor:
    """x @ kron(w1, w2)[start : start + size].T: a window of the product's output rows.

    Row r of kron(w1, w2) is w1's row r // b1 against w2's row r % b1, so the w1 rows i0 … i1 − 1
    that cover the window give (i1 − i0)·b1 rows of which the window is a crop: exact for any start
    (a multiple of b1 or not). The association order is chosen for the covering product's shape.

    Why windows rather than one shared ΔW·x per forward for the modules that split a fused weight
    (FLUX's to_qkv + proj_mlp): each hook stays a pure function of its input and the shared
    factors, so autograd sums both windows' gradients into the one pair, and gradient checkpointing's
    recompute or any call order needs no cache keyed on the input. The price is the window-independent
    part computed per window (X·w2ᵀ in the w2-first order) plus one w1 row at the seam: for FLUX's
    linear1 at (64, 8) about 2.2 M multiply-adds per token instead of 1.2 M, against 66 M of the
    base GEMM (measured on 2 CPU cores, 512 tokens: 158 ms for both windows, 112 ms for the whole
    product, 1.7 s for the base layer).
    """
    b1, rows = w2.shape[0], w1.shape[0] * w2.shape[0]
    if start < 0 or size <= 0 or start + size > rows:
        raise ValueError(f"kron_linear_rows: rows {start} … {start + size - 1} are not within the product's {rows}")
    i0, i1 = start // b1, -(-(start + size) // b1)
    offset = start - i0 * b1
    return kron_linear(x, w1[i0:i1], w2)[..., offset:offset + size]


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

"""Factor math against independent paths: torch.kron materialised, numpy SVD, hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from krona_core.ops.matmul import kron_conv2d, kron_linear, materialise

from krona_core.ops.nearest import kron_rearrange, nearest_kronecker

from krona_core.ops.shapes import KronShape, candidate_shapes, choose_order, choose_shape, divisors, kron_flops, lora_flops, lora_params, nearest_divisor, plan_budget

REL = 1e-5
#: float32 convolutions sum in another order than the materialised one: 1×1 outputs with w1 1×1 differed
#: by 1.02e-5 and 1.05e-5 (hypothesis found them), so the conv checks allow a few float32 ulps more
CONV_REL = 4e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm().clamp_min(1e-30)).detach())


dims = st.sampled_from([1, 2, 3, 4, 6, 8, 10, 12, 15, 16, 20, 24, 30, 40, 64])


@settings(max_examples=60, deadline=None)
@given(a1=dims, a2=dims, b1=dims, b2=dims, n=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_linear_forward_and_grads_match_materialised(a1, a2, b1, b2, n, seed):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(a1, a2, generator=g, requires_grad=True)
    w2 = torch.randn(b1, b2, generator=g, requires_grad=True)
    x = torch.randn(n, 3, a2 * b2, generator=g, requires_grad=True)
    upstream = torch.randn(n, 3, a1 * b1, generator=g)
    ref = x @ torch.kron(w1, w2).T
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (x, w1, w2))
    for order in ("w1_first", "w2_first"):
        y = kron_linear(x, w1, w2, order)
        assert rel_err(y, ref) <= REL
        grads = torch.autograd.grad((y * upstream).sum(), (x, w1, w2))
        for got, want in zip(grads, ref_grads):
            assert rel_err(got, want) <= REL


@pytest.mark.parametrize("needs", [(True, True, True), (False, True, True), (True, False, False), (False, True, False)])
def test_w2_first_backward_with_strided_gradient_and_partial_needs(needs):
    """The hand-written backward of the w2-first product: a transposed (strided) incoming gradient,
    as attention hands back, and every subset of inputs that need a gradient."""
    g = torch.Generator().manual_seed(3)
    a1, a2, b1, b2, n = 8, 4, 5, 6, 7
    x, w1, w2 = (torch.randn(*s, generator=g).requires_grad_(r)
                 for s, r in (((n, a2 * b2), needs[0]), ((a1, a2), needs[1]), ((b1, b2), needs[2])))
    upstream = torch.randn(a1 * b1, n, generator=g).t()  # non-contiguous
    wanted = [t for t in (x, w1, w2) if t.requires_grad]
    ref = torch.autograd.grad(x @ torch.kron(w1, w2).T, wanted, upstream)
    got = torch.autograd.grad(kron_linear(x, w1, w2, "w2_first"), wanted, upstream)
    for a, b in zip(got, ref):
        assert rel_err(a, b) <= REL


def test_w2_first_under_autocast_matches_within_its_precision():
    g = torch.Generator().manual_seed(4)
    w1 = torch.randn(16, 8, generator=g, requires_grad=True)
    w2 = torch.randn(10, 20, generator=g, requires_grad=True)
    x = torch.randn(3, 160, generator=g)
    ref = x @ torch.kron(w1, w2).T
    ref_grads = torch.autograd.grad(ref.sum(), (w1, w2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kron_linear(x, w1, w2, "w2_first")
    grads = torch.autograd.grad(y.float().sum(), (w1, w2))
    assert rel_err(y.float(), ref) <= 2e-2
    for got, want in zip(grads, ref_grads):
        assert rel_err(got, want) <= 2e-2


@settings(max_examples=40, deadline=None)
@given(
    a1=st.sampled_from([1, 2, 3, 4]), a2=st.sampled_from([1, 2, 3]), b1=st.sampled_from([1, 2, 5]),
    b2=st.sampled_from([1, 2, 4]), k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
    padding=st.sampled_from([0, 1]), dilation=st.sampled_from([1, 2]), seed=st.integers(0, 2**16),
)
def test_conv_forward_and_grads_match_materialised(a1, a2, b1, b2, k, stride, padding, dilation, seed):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(a1, a2, generator=g, requires_grad=True)
    w2 = torch.randn(b1, b2, k, k, generator=g, requires_grad=True)
    x = torch.randn(2, a2 * b2, 9, 7, generator=g, requires_grad=True)
    ref = F.conv2d(x, materialise(w1, w2), None, stride, padding, dilation)
    upstream = torch.randn(ref.shape, generator=g)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (x, w1, w2))
    for order in ("w1_first", "w2_first"):
        y = kron_conv2d(x, w1, w2, stride, padding, dilation, order)
        assert y.shape == ref.shape
        assert rel_err(y, ref) <= CONV_REL
        grads = torch.autograd.grad((y * upstream).sum(), (x, w1, w2))
        for got, want in zip(grads, ref_grads):
            assert rel_err(got, want) <= CONV_REL


def test_materialise_is_torch_kron_and_handles_noncontiguous():
    w1 = torch.randn(3, 4).t()  # non-contiguous: torch.kron raises on such views in torch 2.13
    w2 = torch.randn(5, 2)
    expected = np.kron(w1.numpy(), w2.numpy())
    assert np.allclose(materialise(w1, w2).numpy(), expected)
    w2c = torch.randn(5, 2, 3, 3)
    full = materialise(w1, w2c)
    assert full.shape == (4 * 5, 3 * 2, 3, 3)
    # hand-computed element: ΔW[i·b1+p, j·b2+q, u, v] = w1[i, j] · w2[p, q, u, v]
    assert torch.isclose(full[2 * 5 + 4, 1 * 2 + 1, 2, 0], w1[2, 1] * w2c[4, 1, 2, 0])


def test_divisor_fallback_rules():
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert nearest_divisor(320, 64) == 64
    assert nearest_divisor(1000, 64) == 50  # log-distance: 64/50 < 100/64
    assert nearest_divisor(77, 8) == 7  # 77 = 7·11; |log(7/8)| < |log(11/8)|
    assert nearest_divisor(6, 64) == 6  # larger than the dimension: the whole dimension
    assert nearest_divisor(12, 4) == 4
    assert nearest_divisor(33, 6) == 11  # divisors 1, 3, 11, 33: |log 11/6| ≈ 0.61 < |log 3/6| ≈ 0.69
    assert nearest_divisor(40, 3) == 4  # |log 4/3| ≈ 0.29 < |log 2/3| ≈ 0.41
    shape = choose_shape((320, 768), 64, 8)
    assert shape == KronShape(64, 8, 5, 96)
    shape = choose_shape((1000, 77), 64, 8)
    assert (shape.a1, shape.a2, shape.b1, shape.b2) == (50, 7, 20, 11)
    conv = choose_shape((320, 640, 3, 3), 64, 8)
    assert conv.w2_shape == (5, 80, 3, 3) and conv.weight_shape == (320, 640, 3, 3)


def test_paper_default_shapes_and_counts():
    s = choose_shape((320, 320))
    assert (s.w1_shape, s.w2_shape) == ((64, 8), (5, 40))
    assert s.params == 64 * 8 + 5 * 40
    assert lora_params((320, 320), 4) == 4 * 640
    # FLOPs hand-computed for the cheaper order (w2 first): 2·(a2·b2·b1 + a1·a2·b1) per token
    assert choose_order(s) == "w2_first"
    assert kron_flops(s, tokens=10) == 2 * 10 * (8 * 40 * 5 + 64 * 8 * 5)
    assert lora_flops((320, 320), 4, tokens=10) == 2 * 10 * 4 * 640


def test_nearest_kronecker_recovers_exact_products_and_reports_svd_error():
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(6, 4, generator=g), torch.randn(5, 3, generator=g)
    approx = nearest_kronecker(torch.kron(w1, w2), 6, 4)
    assert approx.rel_error < 1e-6
    assert rel_err(approx.materialise(), torch.kron(w1, w2)) < 1e-6
    # conv layout
    w2c = torch.randn(5, 3, 3, 3, generator=g)
    approx = nearest_kronecker(materialise(w1, w2c), 6, 4)
    assert approx.rel_error < 1e-6 and approx.w2.shape == (1, 5, 3, 3, 3)

    W = torch.randn(30, 12, generator=g, dtype=torch.float64)
    errors = []
    for rank in (1, 2, 3, 15):
        approx = nearest_kronecker(W, 5, 3, rank)
        actual = rel_err(approx.materialise(), W)
        # independent: numpy SVD of the rearranged matrix built with explicit loops
        R = np.zeros((15, 24))
        Wn = W.numpy()
        for i in range(5):
            for j in range(3):
                R[i * 3 + j] = Wn[i * 6:(i + 1) * 6, j * 4:(j + 1) * 4].ravel()
        s = np.linalg.svd(R, compute_uv=False)
        expected = math.sqrt((s[rank:] ** 2).sum() / (s ** 2).sum())
        assert abs(approx.rel_error - expected) < 1e-9
        assert abs(actual - expected) < 1e-9
        errors.append(approx.rel_error)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-9  # rank 15 = full rank of the 15×24 R
    assert np.allclose(kron_rearrange(W, 5, 3).numpy(), R)


def test_candidates_one_per_parameter_count_preferring_the_requested_shape():
    cands = candidate_shapes((320, 320), 64, 8)
    counts = [c.params for c in cands]
    assert counts == sorted(set(counts))
    assert all(c.weight_shape == (320, 320) for c in cands)
    # 712 parameters are reachable with a1·a2 = 512 or 200; 512 = 64·8 is the requested product
    assert KronShape(64, 8, 5, 40) in cands
    # every parameter count reachable by some divisor pair is represented
    reachable = {KronShape(d1, d2, 320 // d1, 320 // d2).params for d1 in divisors(320) for d2 in divisors(320)}
    assert set(counts) == reachable


def test_budget_plan_respects_budget_and_is_monotone():
    layers = {f"l{i}": s for i, s in enumerate([(320, 320), (320, 768), (640, 640), (1280, 2048), (640, 640, 3, 3)])}
    minimum = sum(min(c.params for c in candidate_shapes(s)) for s in layers.values())
    with pytest.raises(ValueError, match="below the minimum"):
        plan_budget(layers, minimum - 1)
    previous = None
    for budget in [minimum, 20_000, 50_000, 100_000, 400_000, 2_000_000]:
        plan = plan_budget(layers, budget)
        assert set(plan) == set(layers)
        assert all(plan[k].weight_shape == tuple(layers[k]) for k in layers)
        total = sum(s.params for s in plan.values())
        assert total <= budget
        if previous is not None:
            assert all(plan[k].params >= previous[k].params for k in layers)
        previous = plan
    # the budget is used: within one upgrade step of it
    assert sum(s.params for s in plan_budget(layers, 400_000).values()) > 0.9 * 400_000
    # the default spreads parameters in proportion to the (a1, a2) rule's allocation
    rule = {k: choose_shape(v).params for k, v in layers.items()}
    scaled = plan_budget(layers, 4 * sum(rule.values()))
    ratios = [scaled[k].params / rule[k] for k in layers]
    assert max(ratios) / min(ratios) < 3


def test_budget_plan_with_custom_cost_prefers_cheaper_errors():
    layers = {"a": (64, 64), "b": (64, 64)}
    # layer b gains nothing from more parameters: everything goes to a
    plan = plan_budget(layers, 3000, cost=lambda name, s: 0.0 if name == "b" else 1.0 / s.params)
    assert plan["b"].params == min(c.params for c in candidate_shapes((64, 64)))
    assert plan["a"].params > plan["b"].params

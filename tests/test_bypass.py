"""The one Kronecker bypass forward (krona_core.ops.bypass), each case against the materialised ΔW
applied with torch's own layers as the independent path."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from krona_core.ops.bypass import ConvSpec, RowSlice, add_kron_delta, kron_delta
from krona_core.ops.matmul import materialise


def factors(a1: int, a2: int, b1: int, b2: int, kernel: tuple[int, ...] = (), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(a1, a2, generator=g, dtype=torch.float64), torch.randn(b1, b2, *kernel, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("strength", [1.0, 0.35, -2.0])
def test_linear_equals_x_through_the_materialised_kron(strength):
    w1, w2 = factors(4, 3, 5, 2)
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    expected = strength * F.linear(x, materialise(w1, w2))
    assert torch.allclose(kron_delta(x, w1, w2, strength=strength), expected, atol=1e-12)
    base = torch.randn(2, 7, 20, dtype=torch.float64)
    assert torch.allclose(add_kron_delta(base, x, w1, w2, strength=strength), base + expected, atol=1e-12)
    for order in ("w1_first", "w2_first"):
        assert torch.allclose(kron_delta(x, w1, w2, strength=strength, order=order), expected, atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (1, "same", 1)])
def test_conv_equals_nn_conv2d_with_the_materialised_weight(padding_mode, stride, padding, dilation):
    if padding == "same" and stride != 1:
        pytest.skip("torch refuses padding='same' with stride > 1")
    w1, w2 = factors(2, 3, 4, 2, (3, 3))
    conv = nn.Conv2d(6, 8, 3, stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode,
                     bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(materialise(w1, w2))
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    got = kron_delta(x, w1, w2, ConvSpec.of(conv), strength=0.5)
    assert torch.allclose(got, 0.5 * conv(x), atol=1e-10)
    materialised = kron_delta(x, w1, w2, ConvSpec.of(conv), strength=0.5, materialised=True)
    assert torch.allclose(materialised, 0.5 * conv(x), atol=1e-10)


def test_a_1x1_conv_accepts_linear_shaped_factors():
    w1, w2 = factors(2, 2, 3, 4)
    conv = nn.Conv2d(8, 6, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(materialise(w1, w2)[:, :, None, None])
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    assert torch.allclose(kron_delta(x, w1, w2, ConvSpec.of(conv)), conv(x), atol=1e-12)


def test_row_slice_of_a_fused_linear_weight():
    """q, k and v fused in one (3·d, d) weight: a factor pair adapting k lands in rows d … 2d−1 only."""
    d = 6
    w1, w2 = factors(2, 3, 3, 2)
    fused = torch.randn(3 * d, d, dtype=torch.float64)
    x = torch.randn(4, d, dtype=torch.float64)
    patched = fused.clone()
    patched[d:2 * d] += 1.5 * materialise(w1, w2)
    got = add_kron_delta(F.linear(x, fused), x, w1, w2, strength=1.5, rows=RowSlice(d, d))
    assert torch.allclose(got, F.linear(x, patched), atol=1e-12)


def test_row_slice_of_a_conv_lands_on_its_output_channels():
    w1, w2 = factors(2, 2, 2, 3, (3, 3))
    conv = nn.Conv2d(6, 12, 3, padding=1, bias=False).double()
    x = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    patched = conv.weight.detach().clone()
    patched[4:8] += materialise(w1, w2)
    got = add_kron_delta(conv(x), x, w1, w2, ConvSpec.of(conv), rows=RowSlice(4, 4))
    assert torch.allclose(got, F.conv2d(x, patched, padding=1), atol=1e-10)


def test_strength_rides_on_w1_in_float32_and_gradients_flow():
    w1 = torch.randn(4, 2, requires_grad=True)
    w2 = torch.randn(3, 5, requires_grad=True)
    x = torch.randn(7, 10, dtype=torch.float16)
    out = kron_delta(x, w1, w2, strength=0.25)
    assert out.dtype == torch.float16
    expected = (0.25 * F.linear(x.float(), materialise(w1, w2))).half()
    assert torch.allclose(out.float(), expected.float(), atol=2e-2, rtol=1e-2)
    kron_delta(x.float(), w1, w2, strength=0.25).sum().backward()
    assert w1.grad is not None and w2.grad is not None and w1.grad.abs().sum() > 0


def test_a_row_slice_that_does_not_fit_is_refused():
    w1, w2 = factors(2, 2, 2, 2)
    with pytest.raises(ValueError, match="row slice"):
        add_kron_delta(torch.zeros(1, 12, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64), w1, w2,
                       rows=RowSlice(0, 6))

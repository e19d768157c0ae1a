"""attach(): adapters on diffusers UNets (SD1/SD2/SDXL layouts) and CLIP text encoders, checked
against merged weights and against an independent functional W + kron(w1, w2) path."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
from conftest import make_text_encoder, make_unet, randomize, unet_inputs
from torch.func import functional_call

import krona_core
from krona_core.ops.matmul import materialise

ATTN = re.compile(r"(attn\d\.(to_q|to_k|to_v|to_out\.0)|self_attn\.(q|k|v|out)_proj)$")


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    assert current.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(current[key], value), key


def run(unet, base):
    with torch.no_grad():
        return unet(**unet_inputs(base, unet)).sample


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_attach_selects_attention_and_matches_merged(base):
    unet = make_unet(base)
    before = snapshot(unet)
    reference = run(unet, base)
    handle = krona_core.attach(unet, a1=4, a2=2, targets="attn", seed=0)
    expected = {n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and ATTN.search(n)}
    assert set(handle.paths()) == expected and expected
    assert handle.network == "unet" and handle.base == base
    assert torch.equal(run(unet, base), reference)  # ΔW = 0 at init (w2 = 0)
    randomize(handle)
    hooked = run(unet, base)
    assert rel(hooked, reference) > 1e-3
    handle.merge(backup=False)
    merged = run(unet, base)
    assert rel(merged, hooked) < 1e-5
    handle.unmerge()
    assert rel(run(unet, base), hooked) < 1e-5
    for key, value in unet.state_dict().items():  # subtraction path: fp32 tolerance
        assert torch.allclose(value, before[key], atol=1e-6), key
    after_unmerge = snapshot(unet)
    handle.merge()  # with backup: restores bit-identically what was there before the merge
    handle.remove()
    assert_bit_identical(unet, after_unmerge)


def test_remove_without_merge_is_bit_identical_and_state_dict_keys_unchanged():
    unet = make_unet("sd1")
    before = snapshot(unet)
    handle = krona_core.attach(unet, a1=4, a2=2, targets="all", seed=0)
    assert unet.state_dict().keys() == before.keys()  # hooks, not wrappers: names untouched
    randomize(handle)
    run(unet, "sd1")
    handle.remove()
    assert_bit_identical(unet, before)
    with pytest.raises(RuntimeError, match="removed"):
        handle.merge()


def test_gradients_equal_functional_materialised_path():
    unet = make_unet("sd1")
    unet.requires_grad_(False)
    handle = krona_core.attach(unet, a1=4, a2=2, targets="attn+ff", seed=0)
    randomize(handle)
    inputs = unet_inputs("sd1", unet)
    target = torch.randn_like(run(unet, "sd1"))
    loss = ((unet(**inputs).sample - target) ** 2).mean()
    loss.backward()
    got = {p: (a.w1.grad.clone(), a.w2.grad.clone()) for p, a in handle.items()}

    # independent path: no hooks, weights replaced by W + kron(w1, w2) functionally
    leaves = {p: (a.w1.detach().clone().requires_grad_(), a.w2.detach().clone().requires_grad_()) for p, a in handle.items()}
    handle.enable(False)
    params = dict(unet.named_parameters())
    for p, (w1, w2) in leaves.items():
        params[f"{p}.weight"] = params[f"{p}.weight"] + materialise(w1, w2)
    loss_ref = ((functional_call(unet, params, kwargs=inputs).sample - target) ** 2).mean()
    loss_ref.backward()
    assert abs(loss.item() - loss_ref.item()) < 1e-5 * abs(loss_ref.item())
    for p, (w1, w2) in leaves.items():
        assert rel(got[p][0], w1.grad) < 1e-4, p
        assert rel(got[p][1], w2.grad) < 1e-4, p


def test_conv_adapters_match_merged_including_3x3():
    unet = make_unet("sd1")
    reference = run(unet, "sd1")
    handle = krona_core.attach(unet, a1=4, a2=2, targets="all", seed=0)
    convs = [p for p, a in handle.items() if a.kind == "conv2d"]
    assert any(handle.adapter(p).shape.kernel == (3, 3) for p in convs)
    assert any(handle.adapter(p).shape.kernel == (1, 1) for p in convs)
    randomize(handle, std=0.02)
    hooked = run(unet, "sd1")
    assert rel(hooked, reference) > 1e-3
    handle.merge()
    assert rel(run(unet, "sd1"), hooked) < 1e-5


@pytest.mark.parametrize("projection", [False, True])
def test_text_encoders(projection):
    te = make_text_encoder(width=32, projection=projection)
    ids = torch.tensor([[0, 5, 7, 9, 1, 1, 1, 1]])
    with torch.no_grad():
        reference = te(ids)[0]
    handle = krona_core.attach(te, a1=4, a2=4, targets="attn", network="te2" if projection else "te")
    assert len(handle.paths()) == 2 * 4
    assert all(re.search(r"encoder\.layers\.\d\.self_attn\.(q|k|v|out)_proj$", p) for p in handle.paths())
    randomize(handle)
    with torch.no_grad():
        hooked = te(ids)[0]
        handle.merge()
        merged = te(ids)[0]
    assert rel(hooked, reference) > 1e-3 and rel(merged, hooked) < 1e-5
    names = list(handle.factors())
    prefix = "lora_te2_" if projection else "lora_te_"
    assert all(n.startswith(prefix + "text_model_encoder_layers_") for n in names)


def test_target_presets_and_patterns():
    unet = make_unet("sd1")
    linear = [n for n, m in unet.named_modules() if isinstance(m, nn.Linear)]
    convs = [n for n, m in unet.named_modules() if isinstance(m, nn.Conv2d)]
    assert set(krona_core.attach(unet, 4, 2, "all-linear").paths()) == set(linear)
    assert set(krona_core.attach(unet, 4, 2, "all").paths()) == set(linear + convs)
    ff = krona_core.attach(unet, 4, 2, "attn+ff").paths()
    assert any(p.endswith("ff.net.2") for p in ff) and any(p.endswith("ff.net.0.proj") for p in ff)
    k_only = krona_core.attach(unet, 4, 2, ["*attn2.to_k"]).paths()
    assert k_only and all(p.endswith("attn2.to_k") for p in k_only)
    regex = krona_core.attach(unet, 4, 2, ["re:attn1\\.to_(q|v)$"], exclude=["up_blocks.*"]).paths()
    assert regex and all(re.search(r"attn1\.to_(q|v)$", p) and not p.startswith("up_blocks") for p in regex)
    with pytest.raises(ValueError, match="unknown target"):
        krona_core.attach(unet, 4, 2, "attention")
    with pytest.raises(ValueError, match="no Linear/Conv2d"):
        krona_core.attach(unet, 4, 2, ["*does_not_exist"])


def test_strength_scales_delta_linearly_and_rebakes_when_merged():
    unet = make_unet("sd1")
    reference = run(unet, "sd1")
    handle = krona_core.attach(unet, a1=4, a2=2, seed=0)
    randomize(handle)
    full = run(unet, "sd1")
    handle.set_strength(0.0)
    assert torch.allclose(run(unet, "sd1"), reference, atol=1e-6)
    # at the layer level ΔW scales linearly: compare one layer's hooked output
    path, adapter = next(iter(handle.items()))
    layer = unet.get_submodule(path)
    x = torch.randn(3, layer.in_features)
    outs = {}
    for s in (0.0, 0.5, 1.0):
        handle.set_strength(s)
        with torch.no_grad():
            outs[s] = layer(x)
    assert torch.allclose(outs[0.5] - outs[0.0], 0.5 * (outs[1.0] - outs[0.0]), atol=1e-6)
    handle.set_strength(1.0)
    handle.merge()
    handle.set_strength(0.25)
    with torch.no_grad():
        merged_quarter = layer(x)
    assert torch.allclose(merged_quarter - outs[0.0], 0.25 * (outs[1.0] - outs[0.0]), atol=1e-5)
    handle.set_strength(1.0)
    assert rel(run(unet, "sd1"), full) < 1e-5
    with pytest.raises(ValueError, match="finite"):
        handle.set_strength(float("nan"))


def test_dtype_follows_base_layer_and_override():
    te = make_text_encoder().half()
    handle = krona_core.attach(te, a1=4, a2=4)
    assert all(a.w1.dtype == torch.float16 for _, a in handle.items())
    fp32 = krona_core.attach(te, a1=4, a2=4, dtype=torch.float32)
    assert all(a.w1.dtype == torch.float32 for _, a in fp32.items())
    randomize(fp32)
    with torch.no_grad():
        out = te(torch.tensor([[0, 3, 4, 1]]))[0]
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_stacked_handles_restore_exactly_in_lifo_order():
    unet = make_unet("sd1")
    before = snapshot(unet)
    reference = run(unet, "sd1")
    h1 = krona_core.attach(unet, a1=4, a2=2, seed=1)
    h2 = krona_core.attach(unet, a1=2, a2=4, seed=2)
    randomize(h1, seed=1)
    randomize(h2, seed=2)
    both = run(unet, "sd1")
    h1.enable(False)
    only2 = run(unet, "sd1")
    h1.enable(True)
    h2.enable(False)
    only1 = run(unet, "sd1")
    h2.enable(True)
    # contributions add (first order in the attention projections is not exact through the net,
    # so compare merged against hooked instead)
    h1.merge()
    h2.merge()
    assert rel(run(unet, "sd1"), both) < 1e-5
    h2.remove()
    assert rel(run(unet, "sd1"), only1) < 1e-5
    h1.remove()
    assert_bit_identical(unet, before)
    assert torch.equal(run(unet, "sd1"), reference)
    assert rel(only2, reference) > 1e-4


def test_budget_attach_stays_within_budget():
    unet = make_unet("sdxl")
    handle = krona_core.attach(unet, targets="attn", budget=20_000)
    assert 0.8 * 20_000 < handle.num_parameters() <= 20_000
    assert handle.rule["mode"] == "budget"

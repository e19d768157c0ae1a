"""FLUX.1's single-block `linear1` in the CLI trainer: diffusers computes its rows in two modules
(`attn.to_qkv`: q, k, v; `proj_mlp`: the MLP input), the trainer adapts it as ONE Kronecker pair of
the fused shape. Checked against the materialised fused weight split by hand, against krona_core's
merge of the saved file into the BFL-layout weights, and against the ComfyUI side's factor rule."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers import tiny_flow  # noqa: E402

import krona_core  # noqa: E402
from krona_core import families  # noqa: E402
from krona_core.adapters.attach import attach  # noqa: E402
from krona_core.convert.merge import merge_into_checkpoint  # noqa: E402
from krona_core.ops.bypass import RowSlice  # noqa: E402
from krona_core.ops.matmul import kron_linear_rows, materialise  # noqa: E402
from krona_core.ops.shapes import choose_shape  # noqa: E402
from krona_core.train.config import TrainConfig  # noqa: E402
from krona_core.train.data import examples_from_latents  # noqa: E402
from krona_core.train.dit_backend import DIT_ATTN_TARGETS, DiTDenoiser, fuse_projections  # noqa: E402
from krona_core.train.embeddings import EmbeddingTable  # noqa: E402
from krona_core.train.loop import train  # noqa: E402

H = 32  # hidden width of tiny_flow's Flux.1 (2 heads × 16): linear1 is (7·H, H), to_qkv its rows 0 … 3H − 1
S = "single_transformer_blocks.0."


@pytest.mark.parametrize("start,size", [(0, 96), (96, 128), (40, 17), (0, 224), (223, 1), (56, 112)])
def test_a_row_window_equals_those_rows_of_the_materialised_product(start, size):
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(56, 8, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 5, 32, generator=g, dtype=torch.float64)
    got = kron_linear_rows(x, w1, w2, start, size)
    expected = F.linear(x, materialise(w1, w2)[start:start + size])
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-12)
    upstream = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * upstream).sum(), (w1, w2))
    reference = torch.autograd.grad((expected * upstream).sum(), (w1, w2))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, reference))
    with pytest.raises(ValueError, match="not within"):
        kron_linear_rows(x, w1, w2, 200, 30)


def fused_flux(seed: int = 0) -> DiTDenoiser:
    return DiTDenoiser(tiny_flow.transformer("flux1", seed), EmbeddingTable(tiny_flow.embeddings()))


def block_inputs(seed: int = 5) -> tuple:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 7, H, generator=g), torch.randn(2, 3, H, generator=g), torch.randn(2, H, generator=g)


def materialised_block(block: torch.nn.Module, w1: torch.Tensor, w2: torch.Tensor, inputs: tuple) -> torch.Tensor:
    """The single block with linear1 := W + kron(w1, w2), split by hand into to_qkv (q, k, v) and proj_mlp."""
    weight = torch.cat([block.attn.to_qkv.weight, block.proj_mlp.weight]) + materialise(w1, w2)
    params = {"attn.to_qkv.weight": weight[:3 * H], "proj_mlp.weight": weight[3 * H:]}
    return torch.cat(torch.func.functional_call(block, params, inputs), dim=1)


@pytest.mark.parametrize("checkpointed", [False, True])
def test_the_fused_pair_equals_the_materialised_linear1(checkpointed):
    d = fused_flux()
    assert d.fused_weights == {"single_blocks.0.linear1": [(S + "attn.to_qkv", RowSlice(0, 3 * H)),
                                                           (S + "proj_mlp", RowSlice(3 * H, 4 * H))]}
    block = d.transformer.single_transformer_blocks[0]
    plain = copy.deepcopy(block)
    handle = attach(d.transformer, 4, 4, d.resolve_targets("attn"), fused=d.fused_weights, seed=0, dtype=torch.float32)
    adapter = handle.adapter("single_blocks.0.linear1")
    assert adapter.shape == choose_shape((7 * H, H), 4, 4) and adapter.shape.b1 == 56  # 96 is not a multiple of b1
    g = torch.Generator().manual_seed(1)
    adapter.load_factors(torch.randn(4, 4, generator=g), torch.randn(56, 8, generator=g) * 0.1)
    inputs = block_inputs()
    upstream = torch.randn(2, 10, H, generator=g)
    if checkpointed:
        out = torch.utils.checkpoint.checkpoint(lambda *a: torch.cat(block(*a), dim=1), *inputs, use_reentrant=False)
    else:
        out = torch.cat(block(*inputs), dim=1)
    (out * upstream).sum().backward()
    w1, w2 = (adapter.w1.detach().clone().requires_grad_(), adapter.w2.detach().clone().requires_grad_())
    expected = materialised_block(plain, w1, w2, inputs)
    (expected * upstream).sum().backward()
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(adapter.w1.grad, w1.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(adapter.w2.grad, w2.grad, rtol=1e-4, atol=1e-5)


def test_merge_writes_each_row_window_and_unmerge_restores():
    d = fused_flux()
    block = d.transformer.single_transformer_blocks[0]
    before = {n: p.detach().clone() for n, p in block.named_parameters()}
    handle = attach(d.transformer, 4, 4, d.resolve_targets("attn"), fused=d.fused_weights, dtype=torch.float32)
    adapter = handle.adapter("single_blocks.0.linear1")
    g = torch.Generator().manual_seed(2)
    adapter.load_factors(torch.randn(4, 4, generator=g), torch.randn(56, 8, generator=g))
    handle.set_strength(0.5)
    inputs = block_inputs()
    with torch.no_grad():
        hooked = torch.cat(block(*inputs), dim=1)
        handle.merge()
        merged = torch.cat(block(*inputs), dim=1)
    delta = 0.5 * materialise(adapter.w1, adapter.w2).detach()
    assert torch.allclose(block.attn.to_qkv.weight, before["attn.to_qkv.weight"] + delta[:3 * H], atol=1e-6)
    assert torch.allclose(block.proj_mlp.weight, before["proj_mlp.weight"] + delta[3 * H:], atol=1e-6)
    assert torch.allclose(hooked, merged, atol=1e-5)
    handle.remove()
    assert all(torch.equal(p, before[n]) for n, p in block.named_parameters())


def test_targets_that_split_a_fused_weight_are_refused():
    d = fused_flux()
    with pytest.raises(ValueError, match="single_blocks.0.linear1 is one fused weight.*attn.to_qkv"):
        attach(d.transformer, 4, 4, ["re:proj_mlp$"], fused=d.fused_weights)


def bfl_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapted weights of the tiny diffusers Flux in BFL / ComfyUI layout, by hand (BFL's
    layout: qkv = q, k, v stacked; linear1 = q, k, v, MLP input), plus one weight no file adapts."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def cat(*names: str) -> torch.Tensor:
        return torch.cat([sd[f"{n}.weight"] for n in names])

    d = "transformer_blocks.0."
    return {"double_blocks.0.img_attn.qkv.weight": cat(d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"),
            "double_blocks.0.txt_attn.qkv.weight": cat(d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"),
            "double_blocks.0.img_attn.proj.weight": sd[d + "attn.to_out.0.weight"],
            "double_blocks.0.txt_attn.proj.weight": sd[d + "attn.to_add_out.weight"],
            "double_blocks.0.img_mod.lin.weight": sd[d + "norm1.linear.weight"],
            "single_blocks.0.linear1.weight": cat(S + "attn.to_q", S + "attn.to_k", S + "attn.to_v", S + "proj_mlp"),
            "single_blocks.0.linear2.weight": sd[S + "proj_out.weight"]}


def diffusers_weights(bfl: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `bfl_weights` (diffusers' separate q, k, v and proj_mlp), by hand."""
    d = "transformer_blocks.0."
    qkv, txt, linear1 = (bfl[f"{k}.weight"] for k in ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv",
                                                      "single_blocks.0.linear1"))
    out = {d + "attn.to_out.0.weight": bfl["double_blocks.0.img_attn.proj.weight"],
           d + "attn.to_add_out.weight": bfl["double_blocks.0.txt_attn.proj.weight"],
           d + "norm1.linear.weight": bfl["double_blocks.0.img_mod.lin.weight"],
           S + "proj_out.weight": bfl["single_blocks.0.linear2.weight"], S + "proj_mlp.weight": linear1[3 * H:]}
    for i, (q, a) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
        rows = slice(i * H, (i + 1) * H)
        out[f"{d}attn.{q}.weight"], out[f"{d}attn.{a}.weight"], out[f"{S}attn.{q}.weight"] = qkv[rows], txt[rows], linear1[rows]
    return out


def test_a_trained_file_reapplied_to_the_bfl_weights_gives_the_trained_output(tmp_path):
    d = fused_flux()
    examples = examples_from_latents(tiny_flow.latents(2), [tiny_flow.PROMPT] * 2)
    config = TrainConfig(steps=4, lr=1e-2, a1=4, a2=4, grad_accum=1, batch_size=2, seed=3)
    result = train(d, examples, config)
    file = krona_core.load(result.handles[0].save(str(tmp_path / "flux.krona.safetensors")))
    w1, w2 = file.modules["lora_unet_single_blocks_0_linear1"]
    assert materialise(w1, w2).shape == (7 * H, H) and float(w2.abs().max()) > 0
    assert not any("proj_mlp" in k or "to_qkv" in k for k in file.modules)
    base = tiny_flow.transformer("flux1")
    save_file(bfl_weights(base), str(tmp_path / "bfl.safetensors"))
    merge_into_checkpoint(tmp_path / "bfl.safetensors", file, 1.0, tmp_path / "merged.safetensors")
    merged = diffusers_weights(load_file(str(tmp_path / "merged.safetensors")))
    base.load_state_dict({**base.state_dict(), **merged})
    reference = DiTDenoiser(base, EmbeddingTable(tiny_flow.embeddings()))
    g = torch.Generator().manual_seed(4)
    x_t, t = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([0.3, 0.8])
    cond = d.encode_prompts([tiny_flow.PROMPT] * 2, [])
    with torch.no_grad():
        trained, expected = d.predict(x_t, t, cond), reference.predict(x_t, t, cond)
        result.handles[0].enable(False)
        untrained = d.predict(x_t, t, cond)
    assert float((trained - untrained).abs().max()) > 1e-4  # the adapters changed the output
    assert torch.allclose(trained, expected, atol=1e-5)


def test_the_real_flux_plan_is_the_comfy_sides():
    """On the real FLUX.1 config (meta device): the CLI's attn preset adapts the same weights with the
    same factor shapes as attach() on a model with ComfyUI's module names and shapes (Train KronA)."""
    family = families.get("flux1")
    model = family.build_unet("meta")
    comfy_shapes = family.weight_shapes(model)  # before fusion: the fused weights assembled from their parts
    fused = fuse_projections(model, family)
    cli = attach(model, 64, 8, DIT_ATTN_TARGETS, fused=fused, network="unet", base="flux1")
    comfy = torch.nn.Module()
    for path, shape in comfy_shapes.items():
        parent = comfy
        for part in path.split(".")[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.add_module(path.split(".")[-1], torch.nn.Linear(shape[1], shape[0], device="meta"))
    comfy_handle = attach(comfy, 64, 8, "attn", network="unet", base="flux1")
    assert cli.shapes()["single_blocks.0.linear1"] == choose_shape((21504, 3072), 64, 8)
    cli_factors = {k: (tuple(w1.shape), tuple(w2.shape)) for k, (w1, w2) in cli.factors().items()}
    comfy_factors = {k: (tuple(w1.shape), tuple(w2.shape)) for k, (w1, w2) in comfy_handle.factors().items()}
    assert cli_factors == comfy_factors and len(cli_factors) == 19 * 4 + 38 * 2

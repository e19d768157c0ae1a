"""`--base-dtype fp8`: the frozen diffusion model's layer weights stored in float8_e4m3fn and run in
bf16, under float32 adapters. Checked: the blocks' weights really are 1 byte each (half of bf16's bytes), the model's forward equals the same model with its weights rounded to float8 and run
in bf16 (independent path: the rounding done by hand), training runs and learns what the bf16 base
learns to float8's precision, and the CLI trains with it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import tiny_flow  # noqa: E402

import krona_core  # noqa: E402
from krona_core.train.config import TrainConfig  # noqa: E402
from krona_core.train.data import examples_from_latents  # noqa: E402
from krona_core.train.dit_backend import DiTDenoiser  # noqa: E402
from krona_core.train.embeddings import EmbeddingTable  # noqa: E402
from krona_core.train.loop import train  # noqa: E402
from krona_core.train.memory import STORAGE, store_float8  # noqa: E402

TABLE = tiny_flow.embeddings()


def _denoiser(base: torch.nn.Module) -> DiTDenoiser:
    return DiTDenoiser(tiny_flow.copy_of(base).to(torch.bfloat16), EmbeddingTable(TABLE))


def _block_bytes(model: torch.nn.Module) -> int:
    """Bytes of the blocks' layer weights but their norms' (diffusers keeps every "norm" module, the
    adaLN modulations included, in the compute dtype)."""
    return sum(m.weight.numel() * m.weight.element_size() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "norm" not in n
               and n.split(".")[0] in ("transformer_blocks", "single_transformer_blocks"))


def _inputs(denoiser: DiTDenoiser):
    x = tiny_flow.latents(2)
    cond = denoiser.encode_prompts([tiny_flow.PROMPT] * 2, [None, None])
    return x, torch.tensor([0.3, 0.7]), cond


def test_a_float8_base_is_the_bf16_base_rounded_to_float8():
    base = tiny_flow.transformer("flux1")
    bf16, fp8, rounded = _denoiser(base), _denoiser(base), _denoiser(base)
    store_float8(fp8.transformer)
    stored = {n: m.weight.dtype for n, m in fp8.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    assert stored["transformer_blocks.0.attn.to_qkv"] == STORAGE and stored["single_transformer_blocks.0.proj_mlp"] == STORAGE
    assert _block_bytes(fp8.transformer) * 2 == _block_bytes(bf16.transformer)
    with torch.no_grad():  # the independent path: the same rounding by hand, kept in bf16
        for (_, m), (_, r) in zip(fp8.transformer.named_modules(), rounded.transformer.named_modules()):
            if isinstance(m, torch.nn.Linear) and m.weight.dtype == STORAGE:
                for p in r.parameters():  # weight and bias: the layer is stored whole
                    p.copy_(p.to(STORAGE).to(torch.bfloat16))
    x, t, cond = _inputs(fp8)
    with torch.no_grad():
        out, expected, unrounded = fp8.predict(x, t, cond), rounded.predict(x, t, cond), bf16.predict(x, t, cond)
    assert torch.equal(out, expected)
    assert 0 < (out - unrounded).abs().max() < 0.2 * unrounded.abs().max()  # float8 differs, but only by rounding


def test_training_over_a_float8_base_learns_what_bf16_learns():
    base = tiny_flow.transformer("flux1")
    examples = examples_from_latents(tiny_flow.latents(2), [tiny_flow.PROMPT] * 2)
    config = TrainConfig(steps=4, lr=1e-2, a1=4, a2=4, grad_accum=1, seed=0)
    fp8 = _denoiser(base)
    store_float8(fp8.transformer)
    result = train(fp8, examples, config)
    reference = train(_denoiser(base), examples, config)
    assert {p.dtype for p in result.handles[0].parameters()} == {torch.float32}
    assert result.losses == pytest.approx(reference.losses, rel=0.05)
    trained = torch.cat([a.w2.detach().flatten() for _, a in result.handles[0].items()])
    expected = torch.cat([b.w2.detach().flatten() for _, b in reference.handles[0].items()])
    cosine = torch.nn.functional.cosine_similarity(trained, expected, dim=0)
    print(f"fp8 vs bf16 base: losses {result.losses} / {reference.losses}; cosine of the trained w2 {cosine:.3f}")
    assert trained.abs().max() > 0 and cosine > 0.9  # the same updates up to float8's rounding of the gradients


def test_the_cli_trains_over_a_float8_base(tmp_path):
    from test_dit_train import run

    out = tmp_path / "fp8.krona.safetensors"
    result = run(*tiny_flow.cli_train_args(tmp_path, steps=3), "--base-dtype", "fp8", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    file = krona_core.load(out)
    assert file.base_model == "flux1" and "lora_unet_single_blocks_0_linear1" in file.modules
    assert all(torch.isfinite(w).all() for pair in file.modules.values() for w in pair)

"""The trainer on diffusers flow transformers (tiny Flux.1 and SD3 built from configs): teacher–student
recovery on the rectified-flow objective, exact resume, the files' names, a bf16 base under a float32
adapter, gradient checkpointing, and `python -m krona_core train` on a pipeline folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers import tiny_flow  # noqa: E402

import krona_core  # noqa: E402
from krona_core.train.config import TrainConfig, TrainingInterrupted  # noqa: E402
from krona_core.train.data import examples_from_latents  # noqa: E402
from krona_core.train.dit_backend import DiTDenoiser  # noqa: E402
from krona_core.train.embeddings import EmbeddingTable, load_embeddings, save_embeddings  # noqa: E402
from krona_core.train.loop import train  # noqa: E402
from krona_core.train.objective import diffusion_loss  # noqa: E402

ROOT = _TESTS.parent
FAMILIES = ["flux1", "sd3"]
TABLE = tiny_flow.embeddings()


def denoiser(base: torch.nn.Module, **kw) -> DiTDenoiser:
    return DiTDenoiser(tiny_flow.copy_of(base), EmbeddingTable(TABLE), **kw)


def heldout_loss(d: DiTDenoiser, latents: torch.Tensor, n: int = 64, seed: int = 99) -> float:
    """The flow loss on fixed held-out (x0, ε, σ) draws (common random numbers)."""
    g = torch.Generator().manual_seed(seed)
    x0 = latents[torch.randint(0, len(latents), (n,), generator=g)]
    cond = {k: v.expand(n, *v.shape[1:]) for k, v in TABLE[tiny_flow.PROMPT].items()}
    with torch.no_grad():
        return float(diffusion_loss(d, x0, cond, g, TrainConfig(steps=1)))


def small(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 150, "lr": 1e-2, "a1": 4, "a2": 4, "grad_accum": 1, "batch_size": 2, **kw})


@pytest.mark.parametrize("family", FAMILIES)
def test_student_recovers_the_teacher(family, tmp_path, capsys):
    base = tiny_flow.transformer(family)
    data = tiny_flow.latents(10)
    train_latents, held = data[:6], data[6:]
    examples = examples_from_latents(train_latents, [tiny_flow.PROMPT] * 6)
    losses = {"base": [heldout_loss(denoiser(base), x) for x in (train_latents, held)]}
    for role, seed in (("teacher", 1), ("student", 2)):
        d = denoiser(base)
        result = train(d, examples, small(seed=seed))
        losses[role] = [heldout_loss(d, x) for x in (train_latents, held)]
    gap = [(b - s) / (b - t) for b, t, s in zip(losses["base"], losses["teacher"], losses["student"])]
    with capsys.disabled():
        print(f"\n{family}: held-out flow loss {losses}; gap closed (train, held-out images) {gap}; "
              f"training loss {result.losses[0]:.4f} → {result.losses[-1]:.4f}")
    assert losses["teacher"][0] < 0.95 * losses["base"][0]
    assert min(gap) >= 0.8
    file = krona_core.load(result.handles[0].save(str(tmp_path / "s.krona.safetensors")))
    family_meta = krona_core.families.get(family).metadata()
    assert file.metadata["modelspec.architecture"] == family_meta["modelspec.architecture"]
    expected = ({"lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_double_blocks_0_txt_attn_qkv",
                 "lora_unet_double_blocks_0_img_attn_proj", "lora_unet_double_blocks_0_txt_attn_proj",
                 "lora_unet_single_blocks_0_linear1", "lora_unet_single_blocks_0_linear2"} if family == "flux1" else
                {"lora_unet_joint_blocks_0_x_block_attn_qkv", "lora_unet_joint_blocks_0_context_block_attn_qkv",
                 "lora_unet_joint_blocks_0_x_block_attn_proj", "lora_unet_joint_blocks_0_context_block_attn_proj",
                 "lora_unet_joint_blocks_1_x_block_attn_qkv", "lora_unet_joint_blocks_1_context_block_attn_qkv",
                 "lora_unet_joint_blocks_1_x_block_attn_proj"})
    assert set(file.modules) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_is_bit_identical_to_an_uninterrupted_run(family, tmp_path):
    base = tiny_flow.transformer(family)
    examples = examples_from_latents(tiny_flow.latents(4), [tiny_flow.PROMPT] * 4)
    config = small(steps=8, checkpoint_every=3, checkpoint_dir=str(tmp_path / "a"))
    full = train(denoiser(base), examples, config)
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    config_b = small(steps=8, checkpoint_every=3, checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(TrainingInterrupted) as info:
        train(denoiser(base), examples, config_b, should_stop=stop)
    resumed = train(denoiser(base), examples, config_b, resume_from=info.value.checkpoint)
    assert resumed.losses == full.losses
    for (path, a), (_, b) in zip(full.handles[0].items(), resumed.handles[0].items()):
        assert torch.equal(a.w1, b.w1) and torch.equal(a.w2, b.w2), path


def test_bf16_base_with_float32_adapter_and_gradient_checkpointing():
    base = tiny_flow.transformer("flux1")
    examples = examples_from_latents(tiny_flow.latents(2), [tiny_flow.PROMPT] * 2)
    config = small(steps=3)
    plain = train(denoiser(base), examples, config)
    checkpointed = train(denoiser(base, gradient_checkpointing=True), examples, config)
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-5)
    for (_, a), (_, b) in zip(plain.handles[0].items(), checkpointed.handles[0].items()):
        assert torch.allclose(a.w2, b.w2, atol=1e-6)
    half = denoiser(base.to(torch.bfloat16))
    result = train(half, examples, config)
    assert half.transformer.dtype == torch.bfloat16
    assert {p.dtype for p in result.handles[0].parameters()} == {torch.float32}
    assert all(torch.isfinite(torch.tensor(result.losses)))


def test_embeddings_file_round_trip_and_refusals(tmp_path):
    path = save_embeddings(tmp_path / "e.safetensors", TABLE)
    table = load_embeddings(path)
    assert torch.equal(table.get(tiny_flow.PROMPT)["encoder_hidden_states"], TABLE[tiny_flow.PROMPT]["encoder_hidden_states"])
    with pytest.raises(ValueError, match="no embedding for the prompt 'other'"):
        table.get("other")
    with pytest.raises(ValueError, match="no embeddings for 1 prompt"):
        table.require([tiny_flow.PROMPT, "other"])
    with pytest.raises(ValueError, match="not a readable embeddings file"):
        load_embeddings(tmp_path / "missing.safetensors")


def run(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_trains_a_flux_folder_with_checkpoints_previews_and_resume(tmp_path):
    common = tiny_flow.cli_train_args(tmp_path)
    out = tmp_path / "flux.krona.safetensors"
    result = run(*common, "--out", str(out), "--checkpoint-every", "3", "--validate-every", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    file = krona_core.load(out)
    assert file.base_model == "flux1" and "lora_unet_double_blocks_0_img_attn_qkv" in file.modules
    w1, w2 = file.modules["lora_unet_single_blocks_0_linear1"]  # q, k, v and the MLP input: one pair, fused shape
    assert (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]) == (224, 32)
    assert file.training["steps"] == 6
    assert (tmp_path / "flux.loss.png").is_file()
    assert sorted(p.name for p in tmp_path.glob("flux.preview_*.png")) == ["flux.preview_000003.png", "flux.preview_000006.png"]
    checkpoint = tmp_path / "flux.checkpoints" / "step_000003.krona.safetensors"
    resumed_out = tmp_path / "resumed.krona.safetensors"
    result = run(*common, "--out", str(resumed_out), "--resume", str(checkpoint), "--checkpoint-dir", str(tmp_path / "r"),
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = krona_core.load(resumed_out)
    for key, (w1, w2) in file.modules.items():
        assert torch.equal(w1, resumed.modules[key][0]) and torch.equal(w2, resumed.modules[key][1]), key
    missing = run(*common[:6], str(tmp_path / "emb-missing.safetensors"), *common[7:], "--out", str(tmp_path / "x.krona.safetensors"),
                  cwd=tmp_path)
    assert missing.returncode != 0 and "embeddings" in missing.stderr

"""FLUX.1 and SD3 / SD3.5 single-file transformers (BFL / SAI naming, with and without ComfyUI's
`model.diffusion_model.` prefix) loaded offline into diffusers transformers that compute exactly
what the diffusers transformer they were written from computes; strict refusals; `krona train`
from a single file; `krona embed` writing what the pipeline's own `encode_prompt` returns, and a
training run reading it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers import tiny_flow, tiny_single_file  # noqa: E402
from helpers.subject_images import write_subject_pngs  # noqa: E402

import krona_core  # noqa: E402
from krona_core.cli.main import main  # noqa: E402
from krona_core.train.dit_backend import DiTDenoiser, dit_family_of  # noqa: E402
from krona_core.train.dit_single_file import SingleFileError, load_transformer_file  # noqa: E402
from krona_core.train.embeddings import EmbeddingTable, load_embeddings, save_embeddings  # noqa: E402

ROOT = _TESTS.parent
PROMPT = tiny_flow.PROMPT


def _inputs(model: torch.nn.Module, seed: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    c = model.config
    states = torch.randn(2, 6, c.joint_attention_dim, generator=g)
    pooled = torch.randn(2, c.pooled_projection_dim, generator=g)
    if type(model).__name__.startswith("Flux"):
        ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).reshape(16, 3)
        extra = {"guidance": torch.full((2,), 3.5)} if c.guidance_embeds else {}
        return dict(hidden_states=torch.randn(2, 16, c.in_channels, generator=g), timestep=torch.tensor([0.3, 0.8]),
                    encoder_hidden_states=states, pooled_projections=pooled, txt_ids=torch.zeros(6, 3), img_ids=ids, **extra)
    return dict(hidden_states=torch.randn(2, c.in_channels, 8, 8, generator=g), timestep=torch.tensor([300.0, 800.0]),
                encoder_hidden_states=states, pooled_projections=pooled)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("variant", list(tiny_single_file.VARIANTS))
def test_single_file_loads_the_transformer_it_was_written_from(variant, prefix, tmp_path):
    original = tiny_single_file.transformer(variant)
    path = tiny_single_file.write_single_file(original, tmp_path / f"{variant}.safetensors", prefix)
    assert dit_family_of(path).name == ("flux1" if variant.startswith("flux") else "sd3")
    loaded = load_transformer_file(path)
    expected = {k: v for k, v in original.config.items() if not k.startswith("_") and k != "out_channels"}
    assert {k: loaded.config[k] for k in expected} == expected
    with torch.no_grad():
        a = original(**_inputs(original), return_dict=False)[0]
        b = loaded(**_inputs(loaded), return_dict=False)[0]
    assert torch.equal(a, b)
    half = load_transformer_file(path, torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("variant", list(tiny_single_file.VARIANTS))
def test_the_trainers_fused_transformer_computes_what_the_unfused_one_does(variant):
    """q / k / v fused for training (diffusers' fuse_qkv_projections) changes nothing: SD3.5's qk
    norms and Medium's image-only attn2 included (diffusers' own fused SD3 processor drops both)."""
    import copy

    original = tiny_single_file.transformer(variant)
    fused = DiTDenoiser(copy.deepcopy(original), EmbeddingTable(tiny_flow.embeddings())).transformer
    assert any(name.endswith("to_qkv") for name, _ in fused.named_modules())
    with torch.no_grad():
        assert torch.equal(fused(**_inputs(fused), return_dict=False)[0], original(**_inputs(original), return_dict=False)[0])


def _rewrite(path: Path, out: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    edit(state)
    save_file(state, str(out))
    return out


def test_single_file_refusals_name_the_file_and_the_key(tmp_path):
    path = tiny_single_file.write_single_file(tiny_single_file.transformer("flux1-dev"), tmp_path / "f.safetensors")
    missing = _rewrite(path, tmp_path / "missing.safetensors", lambda s: s.pop("double_blocks.0.txt_attn.proj.bias"))
    with pytest.raises(SingleFileError, match=r"missing\.safetensors.*double_blocks\.0\.txt_attn\.proj\.bias"):
        load_transformer_file(missing)
    extra = _rewrite(path, tmp_path / "extra.safetensors",
                     lambda s: s.update({"double_blocks.0.img_attn.extra.weight": torch.zeros(2, 2)}))
    with pytest.raises(SingleFileError, match=r"extra\.safetensors: 1 unexpected FLUX\.1 tensor.*img_attn\.extra\.weight"):
        load_transformer_file(extra)
    sd3 = tiny_single_file.write_single_file(tiny_single_file.transformer("sd3.5-large"), tmp_path / "s.safetensors")
    wrong = _rewrite(sd3, tmp_path / "wrong.safetensors", lambda s: s.update(
        {"joint_blocks.0.x_block.mlp.fc2.weight": s["joint_blocks.0.x_block.mlp.fc2.weight"][:, :-1].contiguous()}))
    with pytest.raises(SingleFileError, match=r"wrong\.safetensors: .*transformer_blocks\.0\.ff\.net\.2\.weight"):
        load_transformer_file(wrong)
    from safetensors.torch import save_file

    diffusers_named = tmp_path / "diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_single_file.transformer("sd3.5-large").state_dict().items()}, str(diffusers_named))
    with pytest.raises(SingleFileError, match="diffusers naming: give the diffusers folder"):
        load_transformer_file(diffusers_named)
    with pytest.raises(SingleFileError, match="only .safetensors"):
        load_transformer_file(tmp_path / "model.ckpt")
    full = _rewrite(tiny_single_file.write_single_file(tiny_single_file.transformer("flux1-schnell"), tmp_path / "p.safetensors",
                                                       "model.diffusion_model."), tmp_path / "full.safetensors",
                    lambda s: s.update({"first_stage_model.decoder.conv_in.weight": torch.zeros(4, 4, 3, 3),
                                        "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": torch.ones(4)}))
    assert load_transformer_file(full).config.num_layers == 2  # a full checkpoint: its VAE and text encoders are not read


def run(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, "-m", "krona_core", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _dataset(folder: Path) -> Path:
    """Two images, one captioned (name.txt), one trained on the instance prompt."""
    folder.mkdir()
    write_subject_pngs(folder, 2, 64, seed=4, stem="img")
    (folder / "img0.txt").write_text("a photo of sks toy on a table", encoding="utf-8")
    return folder


def _train(base: Path, embeddings: str, images: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run("train", "--base", str(base), "--embeddings", embeddings, "--images", str(images), "--instance-prompt", PROMPT,
               "--steps", "2", "--grad-accum", "1", "--a1", "4", "--a2", "4", "--resolution", "64", "--device", "cpu",
               "--out", str(out), *extra, cwd=out.parent)


@pytest.mark.parametrize("variant", ["flux1-dev", "sd3.5-medium"])
def test_cli_trains_from_a_single_file_with_a_separate_vae(variant, tmp_path):
    base = tiny_single_file.write_single_file(tiny_single_file.transformer(variant), tmp_path / "base.safetensors",
                                              "model.diffusion_model.")
    family = "flux1" if variant.startswith("flux") else "sd3"
    vae = tiny_flow.write_pipeline(tmp_path / "vae-source", family) / "vae"
    images = _dataset(tmp_path / "images")
    embeddings = save_embeddings(tmp_path / "e.safetensors", tiny_flow.embeddings(prompts=(PROMPT, "a photo of sks toy on a table")))
    out = tmp_path / "single.krona.safetensors"
    no_vae = _train(base, embeddings, images, out)
    assert no_vae.returncode == 1 and "no VAE" in no_vae.stderr and "--vae" in no_vae.stderr, no_vae.stderr[-2000:]
    result = _train(base, embeddings, images, out, "--vae", str(vae))
    assert result.returncode == 0, result.stderr[-3000:]
    file = krona_core.load(out)
    assert file.base_model == family and file.training["steps"] == 2
    assert ("lora_unet_double_blocks_0_img_attn_qkv" if family == "flux1" else "lora_unet_joint_blocks_0_x_block_attn_qkv") in file.modules


@pytest.mark.parametrize("family", ["flux1", "sd3"])
def test_embed_writes_what_encode_prompt_returns_and_a_run_reads_it(family, tmp_path):
    import diffusers

    base = tiny_flow.write_text_encoders(tiny_flow.write_pipeline(tmp_path / "pipe", family), family)
    images = _dataset(tmp_path / "images")
    emb = tmp_path / "emb.safetensors"
    args = ["embed", "--pipeline", str(base), "--out", str(emb), "--images", str(images), "--instance-prompt", PROMPT,
            "--prompt", "a sks toy, watercolour", "--max-sequence-length", "8", "--device", "cpu"]
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "saved" in result.stdout and "embedding prompts" in result.stderr
    table = load_embeddings(emb)
    assert list(table.conds) == ["a photo of sks toy on a table", PROMPT, "", "a sks toy, watercolour"]
    name = "FluxPipeline" if family == "flux1" else "StableDiffusion3Pipeline"
    pipe = getattr(diffusers, name).from_pretrained(base, transformer=None, vae=None, scheduler=None, local_files_only=True)
    for prompt, cond in table.conds.items():
        with torch.no_grad():
            got = (pipe.encode_prompt(prompt, None, max_sequence_length=8) if family == "flux1" else
                   pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=False, max_sequence_length=8))
        states, pooled = (got[0], got[1]) if family == "flux1" else (got[0], got[2])
        assert torch.equal(cond["encoder_hidden_states"], states) and torch.equal(cond["pooled_projections"], pooled), prompt
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 1 and again.stderr.strip().count("\n") == 0 and "--overwrite" in again.stderr
    trained = _train(base, str(emb), images, tmp_path / "t.krona.safetensors", "--validate-every", "2")
    assert trained.returncode == 0, trained.stderr[-3000:]


def test_embed_usage_errors_and_refusals(tmp_path, capsys):
    out = str(tmp_path / "e.safetensors")
    cases = [(["embed", "--pipeline", str(tmp_path), "--out", out], 2, "no prompts"),
             (["embed", "--pipeline", str(tmp_path), "--out", out, "--images", str(tmp_path)], 2, "--images needs --instance-prompt"),
             (["embed", "--pipeline", str(tmp_path), "--out", str(tmp_path / "e.pt"), "--prompt", "x"], 2, "must end with .safetensors"),
             (["embed", "--pipeline", str(tmp_path), "--out", out, "--prompt", "x"], 1, "not a diffusers pipeline folder"),
             (["embed", "--pipeline", str(tmp_path / "none"), "--out", out, "--prompt", "x"], 1, "no such folder")]
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    cases.append((["embed", "--pipeline", str(tmp_path / "sd"), "--out", out, "--prompt", "x"], 1, "not a FLUX.1 or SD3"))
    for argv, status, message in cases:
        assert main(argv) == status, argv
        err = capsys.readouterr().err
        assert err.startswith("krona: error: ") and message in err and err.count("\n") == 1, (argv, err)
    assert not os.path.exists(out)

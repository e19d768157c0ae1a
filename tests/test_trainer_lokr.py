"""LoKr files in every trainer's key style, built here from the trainers' public key naming, shapes
and scaling rules, each read against a ΔW computed independently in this file (explicit Kronecker
blocks, the trainer's own scale rule, DoRA's formula written out): kohya / LyCORIS / ai-toolkit /
OneTrainer (`lora_unet_…`), SimpleTuner (`lycoris_…`), ComfyUI's trainer (`diffusion_model.…`), PEFT
(`base_model.model.…` + adapter_config.json), DoRA-LoKr (`dora_scale`) and fused-qkv row windows
(`row_offset`). Unknown styles are refused naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from krona_core.convert.convert import to_krona, to_lora
from krona_core.convert.errors import ConvertError
from krona_core.convert.merge import bind_base, merge_into_checkpoint
from krona_core.convert.sources import load_tensors, read_source

ROOT = Path(__file__).resolve().parents[1]
g = torch.Generator().manual_seed(0)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def kron_blocks(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """ΔW[i·b1 + p, j·b2 + q (, k, l)] = w1[i, j] · w2[p, q (, k, l)], written out block by block."""
    (a1, a2), (b1, b2), kernel = w1.shape, w2.shape[:2], w2.shape[2:]
    out = torch.zeros(a1 * b1, a2 * b2, *kernel, dtype=torch.float64)
    for i in range(a1):
        for j in range(a2):
            out[i * b1:(i + 1) * b1, j * b2:(j + 1) * b2] = w1[i, j].double() * w2.double()
    return out


def save(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata)
    return path


#: one SD1.5 module in every naming (hand-written: diffusers, ldm, kohya)
SD1_Q = ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q")
SD1_OUT = ("up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0", "output_blocks.5.1.transformer_blocks.0.attn2.to_out.0",
           "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_out_0")
SD1_RES = ("down_blocks.0.resnets.1.time_emb_proj", "input_blocks.2.0.emb_layers.1",
           "lora_unet_down_blocks_0_resnets_1_time_emb_proj")
SDXL_K = ("down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k", "input_blocks.4.1.transformer_blocks.1.attn2.to_k",
          "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k")
SDXL_RES = ("down_blocks.0.resnets.0.time_emb_proj", "input_blocks.1.0.emb_layers.1", "lora_unet_input_blocks_1_0_emb_layers_1")


def check(source, name: str, expected: torch.Tensor, exact_krona: bool = True) -> None:
    module = source.modules[name]
    assert tuple(module.weight_shape) == tuple(expected.shape)
    assert torch.allclose(module.dense(), expected, atol=1e-5)
    factors = module.kronecker()
    assert (factors is not None) == exact_krona
    if factors is not None:
        assert torch.allclose(kron_blocks(*factors), expected, atol=1e-5)


def test_kohya_lycoris_full_decomposed_and_tucker(tmp_path):
    """kohya / LyCORIS / ai-toolkit / OneTrainer names; scale 1 when both halves are full (alpha
    ignored), alpha / rank of the decomposed half otherwise; a Tucker conv w2."""
    w1, w2 = rand(4, 2), rand(5, 3)
    w1b, w2a, w2b = rand(4, 2), rand(5, 2), rand(2, 3)
    c1, t2, ca, cb = rand(2, 2), rand(2, 2, 3, 3), rand(2, 4), rand(2, 3)
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    path = save(tmp_path / "kohya.safetensors", {
        f"{SD1_Q[2]}.lokr_w1": w1, f"{SD1_Q[2]}.lokr_w2": w2, f"{SD1_Q[2]}.alpha": torch.tensor(7.0),
        f"{te}.lokr_w1": w1b, f"{te}.lokr_w2_a": w2a, f"{te}.lokr_w2_b": w2b, f"{te}.alpha": torch.tensor(4.0),
        f"{conv}.lokr_w1": c1, f"{conv}.lokr_t2": t2, f"{conv}.lokr_w2_a": ca, f"{conv}.lokr_w2_b": cb,
        f"{conv}.alpha": torch.tensor(1.0)})
    source = read_source(path, base="sd1")
    assert source.format == "lokr"
    check(source, SD1_Q[2], kron_blocks(w1, w2))
    check(source, te, kron_blocks(w1b, w2a @ w2b) * 4.0 / 2)
    # Tucker: w2[p, q, k, l] = Σ_ij t2[i, j, k, l] · a[i, p] · b[j, q], then / rank 2
    tucker = torch.zeros(4, 3, 3, 3, dtype=torch.float64)
    for i in range(2):
        for j in range(2):
            tucker += ca[i].double()[:, None, None, None] * cb[j].double()[None, :, None, None] * t2[i, j].double()
    check(source, conv, kron_blocks(c1, tucker) * 1.0 / 2)


@pytest.mark.parametrize("base, names", [("sd1", (SD1_Q, SD1_OUT, SD1_RES)), ("sdxl", (SDXL_K, SDXL_RES))])
def test_simpletuner_lycoris_names(base, names, tmp_path):
    """SimpleTuner: LyCORIS's wrapper names, `lycoris_` + the diffusers path underscored."""
    tensors, expected = {}, {}
    for diffusers, _, kohya in names:
        w1, w2 = rand(3, 2), rand(4, 5)
        key = "lycoris_" + diffusers.replace(".", "_")
        tensors.update({f"{key}.lokr_w1": w1, f"{key}.lokr_w2": w2, f"{key}.alpha": torch.tensor(1.0)})
        expected[kohya] = kron_blocks(w1, w2)
    source = read_source(save(tmp_path / "st.safetensors", tensors), base=base)
    assert source.format == "lycoris-lokr" and set(source.modules) == set(expected)
    for name, delta in expected.items():
        check(source, name, delta)


def test_comfyui_trainer_names_and_its_bias_diffs(tmp_path):
    """ComfyUI's Train LoRA (algorithm LoKr): ldm paths behind `diffusion_model.`; its dense bias /
    norm differences are refused by key, not dropped."""
    tensors, expected = {}, {}
    for _, ldm, kohya in (SD1_Q, SD1_OUT, SD1_RES):
        w1, w2 = rand(2, 2), rand(3, 4)
        tensors.update({f"diffusion_model.{ldm}.lokr_w1": w1, f"diffusion_model.{ldm}.lokr_w2": w2,
                        f"diffusion_model.{ldm}.alpha": torch.tensor(1.0)})
        expected[kohya] = kron_blocks(w1, w2)
    source = read_source(save(tmp_path / "comfy.safetensors", tensors), base="sd1")
    assert source.format == "comfy-lokr"
    for name, delta in expected.items():
        check(source, name, delta)
    tensors["diffusion_model.input_blocks.1.1.norm.diff_b"] = rand(320)
    with pytest.raises(ConvertError, match=r"input_blocks\.1\.1\.norm.*diff_b.*not Kronecker"):
        read_source(save(tmp_path / "comfy-bias.safetensors", tensors), base="sd1")


def peft_file(tmp_path: Path, config: dict | None, prefix: str = "base_model.model.") -> tuple[Path, dict]:
    w1, w2, w1a, w1b, w2f = rand(4, 2), rand(5, 3), rand(4, 2), rand(2, 2), rand(5, 3)
    q, out = SD1_Q[0], SD1_OUT[0]
    tensors = {f"{prefix}{q}.lokr_w1.default": w1, f"{prefix}{q}.lokr_w2.default": w2,
               f"{prefix}{out}.lokr_w1_a.default": w1a, f"{prefix}{out}.lokr_w1_b.default": w1b,
               f"{prefix}{out}.lokr_w2.default": w2f}
    path = save(tmp_path / "adapter_model.safetensors", tensors)
    if config is not None:
        (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    return path, {SD1_Q[2]: kron_blocks(w1, w2), SD1_OUT[2]: kron_blocks(w1a @ w1b, w2f)}


def test_peft_lokr_scale_comes_from_its_config(tmp_path):
    """PEFT: ΔW = kron(w1, w2) · alpha / r always (full or decomposed), per module by rank_pattern /
    alpha_pattern; without the config the file is refused, not guessed."""
    config = {"peft_type": "LOKR", "r": 8, "alpha": 4, "rank_pattern": {"attn2.to_out.0": 2}, "alpha_pattern": {}}
    path, expected = peft_file(tmp_path, config)
    source = read_source(path, base="sd1")
    assert source.format == "peft-lokr"
    check(source, SD1_Q[2], expected[SD1_Q[2]] * 4 / 8)
    check(source, SD1_OUT[2], expected[SD1_OUT[2]] * 4 / 2)
    bare = tmp_path / "bare"
    bare.mkdir()
    path, _ = peft_file(bare, None, prefix="unet.")
    with pytest.raises(ConvertError, match="adapter_config.json"):
        read_source(path, base="sd1")
    lora_cfg = tmp_path / "lora"
    lora_cfg.mkdir()
    path, _ = peft_file(lora_cfg, {"peft_type": "LORA", "r": 8, "lora_alpha": 8})
    with pytest.raises(ConvertError, match="not a LoKr one"):
        read_source(path, base="sd1")


def test_row_offset_windows(tmp_path):
    """ComfyUI's fused-qkv `row_offset`: the rows of one projection of a (q+k+v)×in product; a
    Kronecker product again when the window is aligned with w2's rows, exact as LoRA always."""
    te = "lora_te_text_model_encoder_layers_0_self_attn_"
    aligned1, aligned2 = rand(6, 2), rand(2, 3)  # product 12×6: q rows 0–5, k 6–8, v 9–11
    cut1, cut2 = rand(3, 2), rand(4, 3)  # product 12×6, w2 rows of 4: k's window 6–8 cuts a block
    path = save(tmp_path / "rows.safetensors", {
        f"{te}q_proj.lokr_w1": aligned1, f"{te}q_proj.lokr_w2": aligned2, f"{te}q_proj.row_offset": torch.tensor(0),
        f"{te}k_proj.lokr_w1": cut1, f"{te}k_proj.lokr_w2": cut2, f"{te}k_proj.row_offset": torch.tensor(6)})
    source = read_source(path, base="sd1")
    check(source, f"{te}q_proj", kron_blocks(aligned1, aligned2)[0:6])
    check(source, f"{te}k_proj", kron_blocks(cut1, cut2)[6:9], exact_krona=False)
    _, errors, _ = to_lora(source)
    assert max(errors.values()) < 1e-6
    bad = save(tmp_path / "bad-rows.safetensors", {f"{te}q_proj.lokr_w1": cut1, f"{te}q_proj.lokr_w2": cut2,
                                                   f"{te}q_proj.row_offset": torch.tensor(5)})
    with pytest.raises(ConvertError, match=r"q_proj.*row_offset 5.*\[0, 6, 9\]"):
        read_source(bad, base="sd1")


@pytest.fixture(scope="module")
def sd15_checkpoint():
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.tiny_comfy import cached_checkpoint

    return cached_checkpoint("sd15")


def dora_expected(weight: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """DoRA as the hosts apply it: (W + ΔW) · m / ‖·‖, the norm per input column (dora_scale 1×in)
    or per output row of W (dora_scale out×1), written out column by column / row by row."""
    w, calc, out = weight.double(), weight.double() + delta, torch.empty_like(weight, dtype=torch.float64)
    if scale.shape[0] == w.shape[0]:
        for i in range(w.shape[0]):
            out[i] = calc[i] * scale[i, 0].double() / w[i].norm()
    else:
        for j in range(w.shape[1]):
            out[:, j] = calc[:, j] * scale[0, j].double() / calc[:, j].norm()
    return out


@pytest.mark.parametrize("axis", ["input", "output"])
def test_dora_lokr_is_applied_as_the_hosts_apply_it(axis, sd15_checkpoint, tmp_path):
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    base = load_tensors(sd15_checkpoint)[0][key].float()
    w1, w2 = rand(8, 4) * 0.05, rand(40, 80) * 0.05
    m = base.norm(dim=0, keepdim=True) * 1.1 if axis == "input" else base.norm(dim=1, keepdim=True) * 0.9
    path = save(tmp_path / "dora.safetensors", {f"{q}.lokr_w1": w1, f"{q}.lokr_w2": w2, f"{q}.dora_scale": m})
    source = read_source(path, base="sd1")
    assert source.format == "dora-lokr"
    with pytest.raises(ConvertError, match="depends on the base weights"):
        to_krona(source)
    adapted = dora_expected(base, kron_blocks(w1, w2), m)
    out = tmp_path / "merged.safetensors"
    merge_into_checkpoint(sd15_checkpoint, source, 0.5, out)
    merged = load_tensors(out)[0][key].double()
    assert torch.allclose(merged, base.double() + 0.5 * (adapted - base.double()), atol=2e-4)  # an fp16 checkpoint
    bound = bind_base(source, sd15_checkpoint)
    assert torch.allclose(bound.modules[q].dense(), adapted - base.double(), atol=1e-5)


def test_unknown_styles_are_refused_naming_the_key(tmp_path):
    loha = save(tmp_path / "loha.safetensors", {f"{SD1_Q[2]}.hada_w1_a": rand(4, 2), f"{SD1_Q[2]}.hada_w1_b": rand(2, 4)})
    with pytest.raises(ConvertError, match=r"unknown key 'lora_unet_.*\.hada_w1_[ab]'"):
        read_source(loha, base="sd1")
    stray = save(tmp_path / "stray.safetensors", {"some_model.blocks.0.lokr_w1": rand(2, 2), "some_model.blocks.0.lokr_w2": rand(2, 2)})
    with pytest.raises(ConvertError, match=r"'some_model\.blocks\.0\.lokr_w1'.*not a UNet module path"):
        read_source(stray, base="sd1")
    newline = save(tmp_path / "newline.safetensors", {f"{SD1_Q[2]}.lokr_w1\n": rand(2, 2), f"{SD1_Q[2]}.lokr_w2": rand(2, 2)})
    with pytest.raises(ConvertError, match="unknown key"):
        read_source(newline, base="sd1")


def test_cli_info_convert_and_merge_read_them(sd15_checkpoint, tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "krona_core", *map(str, args)], cwd=ROOT, capture_output=True, text=True)

    w1, w2 = rand(8, 4) * 0.05, rand(40, 80) * 0.05
    key = "lycoris_" + SD1_Q[0].replace(".", "_")
    src = save(tmp_path / "st.safetensors", {f"{key}.lokr_w1": w1, f"{key}.lokr_w2": w2})
    info = cli("info", src, "--base", "sd1")
    assert info.returncode == 0, info.stderr
    assert "lycoris-lokr" in info.stdout and "1 kronecker" in info.stdout and SD1_Q[2] in info.stdout
    as_json = json.loads(cli("info", src, "--base", "sd1", "--json").stdout)
    assert as_json["modules"][0]["exact_krona"] is True
    converted = cli("convert", src, tmp_path / "st.krona.safetensors", "--base", "sd1", "--float32")
    assert converted.returncode == 0, converted.stderr
    krona = read_source(tmp_path / "st.krona.safetensors")
    check(krona, SD1_Q[2], kron_blocks(w1, w2))
    merged = cli("merge", src, "--checkpoint", sd15_checkpoint, "--out", tmp_path / "m.safetensors", "--strength", "0.5")
    assert merged.returncode == 0, merged.stderr
    ckpt_key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    before, after = load_tensors(sd15_checkpoint)[0][ckpt_key], load_tensors(tmp_path / "m.safetensors")[0][ckpt_key]
    assert torch.allclose(after.double() - before.double(), 0.5 * kron_blocks(w1, w2), atol=2e-3)  # fp16 checkpoint

"""Conversions against independent paths: the official module's forward re-implemented here,
LyCORIS's own LoKr modules, numpy SVDs, and plain weight arithmetic for checkpoint merges."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import krona_core
from krona_core.naming.unet import UNetKeyMap
from krona_core.convert.convert import to_krona, to_lora
from krona_core.convert.errors import ConvertError
from krona_core.convert.lora_math import kron_to_lora
from krona_core.convert.readers import reader_for
from krona_core.convert.sources import read_source
from krona_core.ops.matmul import materialise
from krona_core.convert.merge import merge_files, merge_into_checkpoint, merge_into_diffusers

ROOT = Path(__file__).resolve().parents[1]
REL = 1e-5

# real SD1.5 attention modules (diffusers names) and their (out, in) shapes
SD1_MODULES = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1": {"to_q": (320, 320), "to_out": (320, 320)},
    "down_blocks.1.attentions.1.transformer_blocks.0.attn2": {"to_k": (640, 768), "to_v": (640, 768)},
    "mid_block.attentions.0.transformer_blocks.0.attn1": {"to_q": (1280, 1280)},
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def official_forward(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The IBM DiffuseKronA KronALinearLayer forward (3-D path), written out from its code."""
    a2, a1 = down.shape
    b1, b2 = up.shape
    batch, tokens, _ = x.shape
    h = x.reshape(-1, b2, a2).contiguous().reshape(-1, a2, b2).transpose(1, 2)  # view, view, transpose
    out = up @ (h @ down)  # up.weight @ (hidden @ down.weight)
    return out.reshape(batch, tokens, a1 * b1)


@pytest.fixture()
def official_file(tmp_path) -> tuple[Path, dict]:
    g = torch.Generator().manual_seed(0)
    tensors, raw = {}, {}
    for block, projections in SD1_MODULES.items():
        for proj, (out_f, in_f) in projections.items():
            a1, a2 = 64, 8  # the paper default, as the official scripts train it
            down = torch.randn(a2, a1, generator=g) / a1
            up = torch.randn(out_f // a1, in_f // a2, generator=g) * 0.1
            tensors[f"unet.{block}.processor.{proj}_lora.down.weight"] = down
            tensors[f"unet.{block}.processor.{proj}_lora.up.weight"] = up
            raw[f"{block}.{proj}"] = (down, up)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(tensors, path)
    return path, raw


def test_official_import_matches_the_official_forward(official_file, tmp_path):
    path, raw = official_file
    source = read_source(path)
    assert source.format == "official" and source.base == "sd1"
    lora_tensors, lora_errors, total = to_lora(source)
    assert total < 1e-12
    g = torch.Generator().manual_seed(1)
    for (module, proj), (down, up) in ((k.rsplit(".", 1), v) for k, v in raw.items()):
        target = proj + (".0" if proj == "to_out" else "")
        name = "lora_unet_" + f"{module}.{target}".replace(".", "_")
        x = torch.randn(2, 7, down.shape[0] * up.shape[1], generator=g, dtype=torch.float64)
        expected = official_forward(x, down.double(), up.double())
        dense = source.modules[name].dense()
        assert rel(x @ dense.T, expected) <= REL
        lora_up = lora_tensors[f"{name}.lora_up.weight"].double()
        lora_down = lora_tensors[f"{name}.lora_down.weight"].double()
        assert lora_down.shape[0] == min(down.shape) * min(up.shape)  # exact rank rank(down)·rank(up)
        assert rel(x @ (lora_up @ lora_down).T, expected) <= REL
        # it is NOT a plain Kronecker product of the official factors
        assert rel(x @ materialise(down.T.double(), up.double()).T, expected) > 0.1
    # as a .krona file: nearest Kronecker with the error reported, equal to an independent SVD
    result = to_krona(source)
    for name, err in result.errors.items():
        dense = source.modules[name].dense().numpy()
        w1, w2 = result.file.modules[name]
        a1, a2 = w1.shape
        b1, b2 = w2.shape
        R = dense.reshape(a1, b1, a2, b2).transpose(0, 2, 1, 3).reshape(a1 * a2, b1 * b2)
        s = np.linalg.svd(R, compute_uv=False)
        assert abs(err - math.sqrt(max(1 - s[0] ** 2 / (s ** 2).sum(), 0))) < 1e-6
        assert abs(rel(materialise(w1, w2), torch.from_numpy(dense)) - err) < 1e-5
    assert "source_sha256" in result.file.metadata["krona.provenance"]


def test_old_diffusers_lora_with_the_same_key_names_is_told_apart(tmp_path):
    tensors = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight": torch.randn(4, 768),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight": torch.randn(320, 4)}
    assert reader_for(tensors, "lora.safetensors").format == "peft"
    path = tmp_path / "lora.safetensors"
    save_file(tensors, path)
    source = read_source(path)
    assert source.format == "peft" and source.base == "sd1"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    expected = tensors[next(k for k in tensors if k.endswith("up.weight"))] @ tensors[next(k for k in tensors if k.endswith("down.weight"))]
    assert rel(source.modules[name].dense(), expected) < 1e-6


def _lycoris_modules(kind: str):
    from lycoris.modules.lokr import LokrModule

    torch.manual_seed(0)
    if kind == "conv":
        layer = torch.nn.Conv2d(16, 32, 3, padding=1)
        module = LokrModule("lora_unet_conv", layer, 1.0, lora_dim=2, alpha=3, use_tucker=True, factor=4)
    elif kind == "decomposed":
        layer = torch.nn.Linear(64, 96)
        module = LokrModule("lora_unet_lin", layer, 1.0, lora_dim=2, alpha=5, decompose_both=True, factor=16)
    else:
        layer = torch.nn.Linear(64, 96)
        module = LokrModule("lora_unet_lin", layer, 1.0, lora_dim=10**6, alpha=1, factor=8, full_matrix=True)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return layer, module


@pytest.mark.parametrize("kind", ["full", "decomposed", "conv"])
def test_lycoris_lokr_variants_convert_exactly(kind, tmp_path):
    layer, module = _lycoris_modules(kind)
    state = {f"{module.lora_name}.{k}": v.detach().contiguous() for k, v in module.custom_state_dict().items()}
    if kind == "decomposed":
        assert any(k.endswith("lokr_w2_a") for k in state)
    if kind == "conv":
        assert any(k.endswith("lokr_t2") for k in state)
    path = tmp_path / f"{kind}.safetensors"
    save_file(state, path)
    source = read_source(path, base="sd1")
    assert source.format == ("krona" if kind == "full" else "lokr")
    ours = source.modules[module.lora_name].dense().float()
    with torch.no_grad():
        theirs = module.get_weight(tuple(layer.weight.shape))  # LyCORIS's own ΔW (its scale applied once)
    assert rel(ours.reshape(theirs.shape), theirs) < 1e-5
    result = to_krona(source)
    assert result.total_error == 0.0
    w1, w2 = result.file.modules[module.lora_name]
    assert rel(materialise(w1, w2).reshape(theirs.shape), theirs) < 1e-5
    # and the forward LyCORIS runs agrees with the converted factors
    module.apply_to()
    x = torch.randn(3, 16, 8, 8) if kind == "conv" else torch.randn(3, 64)
    with torch.no_grad():
        patched = layer(x)
        module.restore()
        plain = layer(x)
    if kind != "conv":
        assert rel(patched - plain, x @ materialise(w1, w2).T) < 1e-4


def test_lora_to_krona_recovers_kronecker_loras_and_reports_svd_errors(tmp_path):
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(8, 4, generator=g), torch.randn(40, 80, generator=g) * 0.1
    up, down, err = kron_to_lora(w1, w2)
    assert err < 1e-12 and up.shape[1] == 4 * 40
    tensors = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": up,
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": down,
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(float(up.shape[1]))}
    for i in range(3):  # random LoRAs of rank 4
        tensors[f"lora_unet_up_blocks_1_attentions_{i}_transformer_blocks_0_attn1_to_q.lora_up.weight"] = torch.randn(640, 4, generator=g)
        tensors[f"lora_unet_up_blocks_1_attentions_{i}_transformer_blocks_0_attn1_to_q.lora_down.weight"] = torch.randn(4, 640, generator=g)
        tensors[f"lora_unet_up_blocks_1_attentions_{i}_transformer_blocks_0_attn1_to_q.alpha"] = torch.tensor(2.0)
    path = tmp_path / "mix.safetensors"
    save_file(tensors, path)
    source = read_source(path, base="sd1")
    assert source.format == "lora"
    result = to_krona(source, a1=8, a2=4)
    kron_name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert result.errors[kron_name] <= 1e-5
    for name, err in result.errors.items():
        if name == kron_name:
            continue
        i = name.split("attentions_")[1][0]
        base = f"lora_unet_up_blocks_1_attentions_{i}_transformer_blocks_0_attn1_to_q"
        dense = (tensors[f"{base}.lora_up.weight"] @ tensors[f"{base}.lora_down.weight"]).double().numpy() * 2.0 / 4
        s = np.linalg.svd(dense.reshape(8, 80, 4, 160).transpose(0, 2, 1, 3).reshape(32, 80 * 160), compute_uv=False)
        assert abs(err - math.sqrt(1 - s[0] ** 2 / (s ** 2).sum())) < 1e-6
    # budgets: the reported total error never increases with the budget
    errors = []
    for budget in (20_000, 40_000, 80_000, 160_000, 400_000):
        errors.append(to_krona(source, budget=budget).total_error)
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0]


def test_krona_lora_krona_round_trip_is_exact(tmp_path):
    from conftest import make_unet, randomize

    unet = make_unet("sd1")
    handle = krona_core.attach(unet, a1=4, a2=2, targets="all")  # linear and conv modules
    randomize(handle, std=0.1)
    src = handle.save(tmp_path / "a.krona.safetensors", dtype=torch.float32)
    tensors, errors, total = to_lora(read_source(src))
    assert total < 1e-6
    lora_path = tmp_path / "a_lora.safetensors"
    save_file(tensors, lora_path)
    back = to_krona(read_source(lora_path, base="sd1"), a1=4, a2=2)
    original = krona_core.load(src)
    assert max(back.errors.values()) < 1e-5
    for name, (w1, w2) in original.modules.items():
        assert rel(materialise(*back.file.modules[name]), materialise(w1, w2)) < 1e-5
    # a truncated export reports the error of the discarded singular values
    _, errors_r2, total_r2 = to_lora(read_source(src), rank=2)
    assert 0 < total_r2 < 1


def test_merging_files(two_krona_files):
    f1, f2 = two_krona_files
    result = merge_files([f1, f2], [0.5, 2.0])
    assert result.file.trigger_words == ["sks", "ohwx"]
    for name, (w1, w2) in result.file.modules.items():
        expected = 0.5 * materialise(*f1.modules[name]).double()
        if name in f2.modules:
            expected = expected + 2.0 * materialise(*f2.modules[name]).double()
            assert abs(result.errors[name] - rel(materialise(w1, w2), expected)) < 1e-5
        else:
            assert result.errors[name] == 0.0 and rel(materialise(w1, w2), expected) < 1e-6


def _ldm_checkpoint(unet, te, path: Path) -> Path:
    kmap = UNetKeyMap.from_names(n for n, _ in unet.named_modules() if n)
    tensors = {"model.diffusion_model." + kmap.to_ldm(k): v.detach().clone() for k, v in unet.state_dict().items()}
    for k, v in te.state_dict().items():
        tensors["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v.detach().clone()
    save_file(tensors, path)
    return path


def test_merge_into_single_file_and_diffusers_checkpoints(tmp_path):
    from conftest import make_text_encoder, make_unet, randomize
    from helpers.tiny_diffusers import write_tiny_diffusers

    from krona_core.tiny.pipeline import build_tiny_pipeline

    unet, te = make_unet("sd1"), make_text_encoder(width=768)
    ckpt = _ldm_checkpoint(unet, te, tmp_path / "base.safetensors")
    h_unet = krona_core.attach(unet, a1=4, a2=2, base="sd1")
    h_te = krona_core.attach(te, a1=4, a2=4, network="te", base="sd1")
    randomize(h_unet, seed=1)
    randomize(h_te, seed=2)
    path = krona_core.save(tmp_path / "m.krona.safetensors", [h_unet, h_te], dtype=torch.float32)
    file = krona_core.load(path)
    merge_into_checkpoint(ckpt, file, 0.7, tmp_path / "merged.safetensors")
    with pytest.raises(ConvertError, match="exists; nothing was overwritten"):
        merge_into_checkpoint(ckpt, file, 0.7, tmp_path / "merged.safetensors")
    merged = load_file(tmp_path / "merged.safetensors")
    h_unet.set_strength(0.7)
    h_te.set_strength(0.7)
    h_unet.merge()
    h_te.merge()
    reference = load_file(_ldm_checkpoint(unet, te, tmp_path / "reference.safetensors"))
    assert merged.keys() == reference.keys()
    changed = 0
    for key in reference:
        assert torch.allclose(merged[key], reference[key], atol=1e-6), key
        changed += not torch.equal(merged[key], load_file(ckpt)[key])
    assert changed == len(file.modules)

    # a diffusers folder, baked into a new folder
    folder = write_tiny_diffusers(tmp_path / "tiny", seed=0)
    pipe = build_tiny_pipeline(0)
    handle = krona_core.attach(pipe.unet, a1=4, a2=2)
    randomize(handle, seed=3)
    krona_path = handle.save(tmp_path / "tiny.krona.safetensors", dtype=torch.float32)
    merge_into_diffusers(folder, krona_core.load(krona_path), 1.0, tmp_path / "tiny-merged")
    handle.merge()
    baked = load_file(next((tmp_path / "tiny-merged" / "unet").glob("*.safetensors")))
    for key, value in pipe.unet.state_dict().items():
        assert torch.allclose(baked[key], value, atol=1e-6), key


def test_unknown_keys_are_refused(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"lora_unet_x.lokr_w1": torch.ones(2, 2), "lora_unet_x.lokr_w2": torch.ones(2, 2), "something.else": torch.ones(1)}, path)
    with pytest.raises(ConvertError, match="unknown key 'something.else'"):
        read_source(path)
    result = subprocess.run([sys.executable, "-m", "krona_core", "convert", str(path), str(tmp_path / "o.krona.safetensors")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "something.else" in result.stderr


def test_mixed_formats_are_refused_with_a_reason(tmp_path):
    path = tmp_path / "mixed.safetensors"
    save_file({"lora_unet_x.lokr_w1": torch.ones(2, 2), "lora_unet_x.lokr_w2": torch.ones(2, 2),
               "lora_unet_y.lora_down.weight": torch.ones(1, 4), "lora_unet_y.lora_up.weight": torch.ones(4, 1)}, path)
    with pytest.raises(ConvertError, match="mixes keys of several adapter formats"):
        read_source(path)


def test_lycoris_full_files_read_back_exactly(tmp_path):
    """`convert --to diff` writes LyCORIS "full" ΔWs; the Dense reader reads them back as written."""
    model = torch.nn.Sequential(torch.nn.Linear(12, 8))
    handle = krona_core.attach(model, a1=4, a2=3, targets="all-linear", network="unet")
    with torch.no_grad():
        for _, adapter in handle.items():
            adapter.w2.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    src = handle.save(str(tmp_path / "k.krona.safetensors"), dtype=torch.float32)
    krona_core.convert_file(src, tmp_path / "k.diff.safetensors", to="diff", float32=True)
    source = read_source(tmp_path / "k.diff.safetensors")
    assert source.format == "diff"
    (name, module), = source.modules.items()
    w1, w2 = krona_core.load(src).modules[name]
    assert torch.equal(module.dense().float(), materialise(w1, w2))
    back = to_krona(source, 4, 3)
    assert back.total_error < 1e-6  # a rank-1 Kronecker ΔW is found again by its nearest Kronecker product


def test_peft_and_official_files_convert_without_diffusers(tmp_path, official_file):
    """A ComfyUI install has no diffusers: module names come from the family registry."""
    path, _ = official_file
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "from krona_core.convert.sources import read_source\n"
            f"s = read_source({str(path)!r}); print(s.format, s.base, len(s.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["official", "sd1", str(sum(len(p) for p in SD1_MODULES.values()))]

"""Files of the transformer families: metadata, Info, Convert of another trainer's diffusers-named
file (row slices of fused weights assembled), Merge into a single-file checkpoint — each checked
against a hand-computed ΔW."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from krona_core import families
from krona_core.convert.convert import convert_file
from krona_core.convert.errors import ConvertError
from krona_core.convert.merge import merge_into_checkpoint
from krona_core.convert.sources import read_source
from krona_core.files.describe import describe
from krona_core.files.reader import read
from krona_core.files.writer import build_metadata, write
from krona_core.ops.matmul import materialise

H = 8  # hidden width of the tiny Flux-named checkpoint


def flux_checkpoint(path, prefix: str = "") -> dict[str, torch.Tensor]:
    """A tiny bare (BFL-named) FLUX.1 diffusion model: one double and one single block."""
    g = torch.Generator().manual_seed(0)
    shapes = {"img_in": (H, 4), "txt_in": (H, 6), "double_blocks.0.img_mod.lin": (6 * H, H),
              "double_blocks.0.img_attn.qkv": (3 * H, H), "double_blocks.0.img_attn.proj": (H, H),
              "double_blocks.0.txt_attn.qkv": (3 * H, H), "double_blocks.0.img_mlp.0": (4 * H, H),
              "single_blocks.0.linear1": (7 * H, H), "single_blocks.0.linear2": (H, 5 * H),
              "final_layer.linear": (4, H)}
    tensors = {f"{prefix}{k}.weight": torch.randn(s, generator=g) for k, s in shapes.items()}
    tensors[f"{prefix}double_blocks.0.img_attn.norm.key_norm.scale"] = torch.ones(2)
    save_file(tensors, str(path))
    return tensors


def krona_file(path, modules: dict, base: str = "flux1"):
    return write(path, modules, build_metadata(modules, base_model=base, title="t", trigger_words=["sks"]))


def test_metadata_and_info_name_the_family(tmp_path):
    g = torch.Generator().manual_seed(1)
    modules = {"lora_unet_double_blocks_0_img_attn_qkv": (torch.randn(4, 2, generator=g), torch.randn(6, 4, generator=g))}
    file = read(krona_file(tmp_path / "a.krona.safetensors", modules))
    assert file.metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert file.metadata["ss_base_model_version"] == "flux1" and file.base_model == "flux1"
    text = describe(file)
    assert "base model: flux1 (FLUX.1), modelspec flux-1-dev/lora" in text
    assert "lora_unet_double_blocks_0_img_attn_qkv" in text


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_merge_into_a_single_file_checkpoint(tmp_path, prefix):
    base = flux_checkpoint(tmp_path / "flux.safetensors", prefix)
    g = torch.Generator().manual_seed(2)
    modules = {"lora_unet_single_blocks_0_linear1": (torch.randn(7, 2, generator=g), torch.randn(H, 4, generator=g)),
               "lora_unet_double_blocks_0_img_attn_proj": (torch.randn(2, 2, generator=g), torch.randn(4, 4, generator=g))}
    file = read(krona_file(tmp_path / "a.krona.safetensors", modules))
    report = merge_into_checkpoint(tmp_path / "flux.safetensors", file, 0.5, tmp_path / "merged.safetensors")
    assert report == {"base": "flux1", "modules": "2"}
    merged = load_file(str(tmp_path / "merged.safetensors"))
    for name, key in (("lora_unet_single_blocks_0_linear1", "single_blocks.0.linear1"),
                      ("lora_unet_double_blocks_0_img_attn_proj", "double_blocks.0.img_attn.proj")):
        w1, w2 = file.modules[name]
        expected = base[f"{prefix}{key}.weight"] + 0.5 * torch.kron(w1.float(), w2.float())
        assert torch.allclose(merged[f"{prefix}{key}.weight"], expected, atol=1e-5)
    untouched = f"{prefix}double_blocks.0.img_mod.lin.weight"
    assert torch.equal(merged[untouched], base[untouched])


def test_merge_refuses_a_file_for_another_family(tmp_path):
    flux_checkpoint(tmp_path / "flux.safetensors")
    modules = {"lora_unet_joint_blocks_0_x_block_attn_qkv": (torch.ones(2, 2), torch.ones(12, 4))}
    file = read(krona_file(tmp_path / "a.krona.safetensors", modules, base="sd3"))
    with pytest.raises(ConvertError, match="the file is for sd3.*is flux1"):
        merge_into_checkpoint(tmp_path / "flux.safetensors", file, 1.0, tmp_path / "out.safetensors")


def peft_flux_lora(path, rank: int = 2) -> dict[str, torch.Tensor]:
    """A diffusers / PEFT FLUX.1 LoRA (ai-toolkit, SimpleTuner, diffusers scripts): to_q / to_k /
    to_v of the double block, and to_q / proj_mlp of the single block, as separate modules."""
    g = torch.Generator().manual_seed(3)
    rows = {"transformer.transformer_blocks.0.attn.to_q": H, "transformer.transformer_blocks.0.attn.to_k": H,
            "transformer.transformer_blocks.0.attn.to_v": H, "transformer.transformer_blocks.0.attn.to_out.0": H,
            "transformer.single_transformer_blocks.0.attn.to_q": H,
            "transformer.single_transformer_blocks.0.proj_mlp": 4 * H}
    tensors = {}
    for module, out in rows.items():
        tensors[f"{module}.lora_A.weight"] = torch.randn(rank, H, generator=g)
        tensors[f"{module}.lora_B.weight"] = torch.randn(out, rank, generator=g)
    save_file(tensors, str(path))
    return tensors


def test_diffusers_slices_are_assembled_into_the_fused_weight(tmp_path):
    t = peft_flux_lora(tmp_path / "peft.safetensors")

    def delta(module):
        return t[f"transformer.{module}.lora_B.weight"].double() @ t[f"transformer.{module}.lora_A.weight"].double()

    source = read_source(tmp_path / "peft.safetensors", base="flux1")
    assert sorted(source.modules) == ["lora_unet_double_blocks_0_img_attn_proj", "lora_unet_double_blocks_0_img_attn_qkv",
                                      "lora_unet_single_blocks_0_linear1"]
    qkv = torch.cat([delta(f"transformer_blocks.0.attn.to_{p}") for p in "qkv"])
    assert torch.allclose(source.modules["lora_unet_double_blocks_0_img_attn_qkv"].dense(), qkv)
    linear1 = torch.zeros(7 * H, H, dtype=torch.float64)  # q, k, v, mlp rows; k and v not in the file
    linear1[:H] = delta("single_transformer_blocks.0.attn.to_q")
    linear1[3 * H:] = delta("single_transformer_blocks.0.proj_mlp")
    assert torch.allclose(source.modules["lora_unet_single_blocks_0_linear1"].dense(), linear1)


def test_convert_a_diffusers_flux_lora_to_krona(tmp_path):
    peft_flux_lora(tmp_path / "peft.safetensors")
    report = convert_file(tmp_path / "peft.safetensors", tmp_path / "out.krona.safetensors", a1=4, a2=2, base="flux1")
    file = read(tmp_path / "out.krona.safetensors")
    assert file.base_model == "flux1" and "lora_unet_single_blocks_0_linear1" in file.modules
    assert "relative error" in report.text
    source = read_source(tmp_path / "peft.safetensors", base="flux1")
    for name, (w1, w2) in file.modules.items():  # the nearest Kronecker product is no worse than zero
        fit = materialise(w1.double(), w2.double())
        assert float((fit - source.modules[name].dense()).norm()) < float(source.modules[name].dense().norm())


def test_convert_refuses_names_the_family_does_not_have(tmp_path):
    save_file({"transformer.pos_embedder.lora_A.weight": torch.ones(2, H),
               "transformer.pos_embedder.lora_B.weight": torch.ones(H, 2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConvertError, match="bad.safetensors: module 'transformer.pos_embedder'.*not a FLUX.1 module path"):
        read_source(tmp_path / "bad.safetensors", base="flux1")


def test_detection_of_a_bare_checkpoint(tmp_path):
    tensors = flux_checkpoint(tmp_path / "flux.safetensors")
    assert families.detect({k: tuple(v.shape) for k, v in tensors.items()}) is families.get("flux1")

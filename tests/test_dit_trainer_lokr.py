"""LoKr files of the transformer families in the key styles of the trainers that train them on
diffusers models, built here with the key forms read off the trainers' source and checked against
a ΔW written out block by block in this file (row slices of a fused weight stacked by hand):

- SimpleTuner: `lycoris_<diffusers path, dots → underscores>` — LyCORIS `lycoris/wrapper.py`
  (`LycorisNetwork.LORA_PREFIX = "lycoris"`, `lora_name.replace(".", "_")`), which SimpleTuner's
  `simpletuner/helpers/training/trainer.py` wraps around the transformer (`create_lycoris(
  self.model.get_trained_component(), …)`); ai-toolkit's old LoKr format writes it too
  (`toolkit/network_mixins.py`: `lora_transformer_` → `lycoris_`);
- OneTrainer legacy (FLUX.1, SD3, Chroma): `lora_transformer_<underscored diffusers path>` —
  `modules/util/convert_lora_util.py` `convert_to_mixture` (`transformer` → `lora_transformer`,
  then `kohya_flatten`), the `_convert_legacy` of `modules/modelSaver/flux/FluxLoRASaver.py`;
- OneTrainer diffusers / internal and ai-toolkit: `transformer.<diffusers path>` with the LoKr
  `alpha` kept — OneTrainer `LoRAModuleWrapper(model.transformer, "transformer", …)`
  (`modules/modelSetup/FluxLoRASetup.py`, `StableDiffusion3LoRASetup.py`) saved by
  `convert_to_diffusers` ("LoHa/LoKr/OFT … .alpha passes through"); ai-toolkit
  `toolkit/lora_special.py` (`unet_prefix = "transformer"` when `peft_format`) and
  `network_mixins.py` ("lokr needs alpha").

All three keep q, k and v (and FLUX's single-block `proj_mlp`) as separate modules; the scale is
LyCORIS's (OneTrainer's `LoKrModule`: alpha / dim, alpha = dim when both halves are full).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_trainer_lokr import kron_blocks, save  # noqa: E402

from krona_core import families  # noqa: E402
from krona_core.convert.convert import to_krona  # noqa: E402
from krona_core.convert.errors import ConvertError  # noqa: E402
from krona_core.convert.sources import read_source  # noqa: E402
from krona_core.families.dit import DiTFamily  # noqa: E402

H = 8
STYLES: dict[str, tuple[str, Callable[[str], str]]] = {
    "simpletuner": ("lycoris-lokr", lambda p: "lycoris_" + p.replace(".", "_")),
    "onetrainer-legacy": ("onetrainer-lokr", lambda p: "lora_transformer_" + p.replace(".", "_")),
    "onetrainer-diffusers": ("transformer-lokr", lambda p: "transformer." + p),
}


class Corpus:
    """One file's modules: {diffusers path: (its tensors, its ΔW written out)}."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)
        self.deltas: dict[str, torch.Tensor] = {}
        self.parts: dict[str, dict[str, torch.Tensor]] = {}

    def full(self, path: str, out: int, cols: int = H) -> None:
        w1, w2 = torch.randn(2, 2, generator=self.g), torch.randn(out // 2, cols // 2, generator=self.g)
        self.parts[path] = {"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(1.0)}  # both full: scale 1
        self.deltas[path] = kron_blocks(w1, w2)

    def decomposed(self, path: str, out: int, cols: int = H, alpha: float = 3.0) -> None:
        w1 = torch.randn(2, 2, generator=self.g)
        a, b = torch.randn(out // 2, 2, generator=self.g), torch.randn(2, cols // 2, generator=self.g)
        self.parts[path] = {"lokr_w1": w1, "lokr_w2_a": a, "lokr_w2_b": b, "alpha": torch.tensor(alpha)}
        self.deltas[path] = kron_blocks(w1, a @ b) * alpha / 2  # alpha / rank of the decomposed half

    def write(self, path: Path, style: str) -> Path:
        key = STYLES[style][1]
        return save(path, {f"{key(m)}.{part}": t for m, parts in self.parts.items() for part, t in parts.items()})


def stacked(rows: int, blocks: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """A fused weight's ΔW with the given row blocks at their offsets, the rest zero."""
    out = torch.zeros(rows, blocks[0][1].shape[1], dtype=torch.float64)
    for start, delta in blocks:
        out[start:start + delta.shape[0]] = delta
    return out


def flux_corpus() -> tuple[Corpus, dict[str, torch.Tensor]]:
    c = Corpus(0)
    c.full("transformer_blocks.0.attn.to_q", H)
    c.decomposed("transformer_blocks.0.attn.to_k", H)
    c.full("transformer_blocks.0.attn.to_v", H)
    c.full("transformer_blocks.0.attn.add_k_proj", H)  # the text stream's k only
    c.full("transformer_blocks.0.attn.to_out.0", H)
    c.full("transformer_blocks.0.ff.net.0.proj", 4 * H)
    c.full("single_transformer_blocks.0.attn.to_q", H)
    c.full("single_transformer_blocks.0.proj_mlp", 4 * H)  # linear1 rows: q, k, v (H each), mlp (4 H)
    c.decomposed("single_transformer_blocks.0.proj_out", H, cols=5 * H, alpha=1.0)
    d = c.deltas
    expected = {
        "lora_unet_double_blocks_0_img_attn_qkv": torch.cat([d["transformer_blocks.0.attn.to_q"],
                                                             d["transformer_blocks.0.attn.to_k"],
                                                             d["transformer_blocks.0.attn.to_v"]]),
        "lora_unet_double_blocks_0_txt_attn_qkv": stacked(3 * H, [(H, d["transformer_blocks.0.attn.add_k_proj"])]),
        "lora_unet_double_blocks_0_img_attn_proj": d["transformer_blocks.0.attn.to_out.0"],
        "lora_unet_double_blocks_0_img_mlp_0": d["transformer_blocks.0.ff.net.0.proj"],
        "lora_unet_single_blocks_0_linear1": stacked(7 * H, [(0, d["single_transformer_blocks.0.attn.to_q"]),
                                                             (3 * H, d["single_transformer_blocks.0.proj_mlp"])]),
        "lora_unet_single_blocks_0_linear2": d["single_transformer_blocks.0.proj_out"],
    }
    return c, expected


def sd3_corpus() -> tuple[Corpus, dict[str, torch.Tensor]]:
    c = Corpus(1)
    for p in "qkv":
        c.full(f"transformer_blocks.0.attn.to_{p}", H)
    c.decomposed("transformer_blocks.0.attn.add_q_proj", H)
    c.full("transformer_blocks.0.attn.to_add_out", H)
    c.full("transformer_blocks.0.attn2.to_v", H)  # SD3.5 Medium's second image attention
    c.full("transformer_blocks.0.ff_context.net.2", H, cols=4 * H)
    d = c.deltas
    expected = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": torch.cat([d[f"transformer_blocks.0.attn.to_{p}"] for p in "qkv"]),
        "lora_unet_joint_blocks_0_context_block_attn_qkv": stacked(3 * H, [(0, d["transformer_blocks.0.attn.add_q_proj"])]),
        "lora_unet_joint_blocks_0_context_block_attn_proj": d["transformer_blocks.0.attn.to_add_out"],
        "lora_unet_joint_blocks_0_x_block_attn2_qkv": stacked(3 * H, [(2 * H, d["transformer_blocks.0.attn2.to_v"])]),
        "lora_unet_joint_blocks_0_context_block_mlp_fc2": d["transformer_blocks.0.ff_context.net.2"],
    }
    return c, expected


def check_modules(source, expected: dict[str, torch.Tensor], whole: set[str]) -> None:
    assert set(source.modules) == set(expected)
    for name, delta in expected.items():
        module = source.modules[name]
        assert tuple(module.weight_shape) == tuple(delta.shape), name
        assert torch.allclose(module.dense(), delta, atol=1e-5), name
        factors = module.kronecker()
        assert (factors is not None) == (name in whole), name  # assembled slices are dense
        if factors is not None:
            assert torch.allclose(kron_blocks(*factors), delta, atol=1e-5), name


@pytest.mark.parametrize("style", STYLES)
def test_flux_files_of_other_trainers(style, tmp_path):
    corpus, expected = flux_corpus()
    path = corpus.write(tmp_path / f"flux-{style}.safetensors", style)
    source = read_source(path)  # the family is detected from the names
    assert source.base == "flux1" and source.format == STYLES[style][0]
    whole = {"lora_unet_double_blocks_0_img_attn_proj", "lora_unet_double_blocks_0_img_mlp_0",
             "lora_unet_single_blocks_0_linear2"}
    check_modules(source, expected, whole)
    conversion = to_krona(source, a1=4, a2=2)
    assert conversion.file.base_model == "flux1"
    for name in whole:  # whole weights convert exactly
        assert conversion.errors[name] == 0.0
        assert torch.allclose(kron_blocks(*conversion.file.modules[name]), expected[name], atol=1e-5)


@pytest.mark.parametrize("style", STYLES)
def test_sd3_files_of_other_trainers(style, tmp_path):
    corpus, expected = sd3_corpus()
    source = read_source(corpus.write(tmp_path / f"sd3-{style}.safetensors", style), base="sd3")
    assert source.format == STYLES[style][0]
    whole = {"lora_unet_joint_blocks_0_context_block_attn_proj", "lora_unet_joint_blocks_0_context_block_mlp_fc2"}
    check_modules(source, expected, whole)


@pytest.mark.parametrize("style", STYLES)
def test_families_without_fused_weights(style, tmp_path):
    """Qwen-Image (its original names are its diffusers ones) and Wan (renamed by its table)."""
    for base, diffusers, kohya in (("qwen_image", "transformer_blocks.0.attn.add_q_proj",
                                    "lora_unet_transformer_blocks_0_attn_add_q_proj"),
                                   ("qwen_image", "transformer_blocks.1.img_mlp.net.0.proj",
                                    "lora_unet_transformer_blocks_1_img_mlp_net_0_proj"),
                                   ("wan", "blocks.3.attn2.to_out.0", "lora_unet_blocks_3_cross_attn_o"),
                                   ("wan", "blocks.0.ffn.net.0.proj", "lora_unet_blocks_0_ffn_0")):
        corpus = Corpus(2)
        corpus.full(diffusers, H)
        source = read_source(corpus.write(tmp_path / f"{base}-{style}.safetensors", style), base=base)
        check_modules(source, {kohya: corpus.deltas[diffusers]}, {kohya})


@pytest.mark.parametrize("family", [f for f in families.FAMILIES if isinstance(f, DiTFamily)], ids=lambda f: f.name)
def test_every_rule_reads_back_from_its_underscored_form(family):
    """No two rules of a family share an underscored form: each diffusers path, underscored as
    the trainers write it, names the same original weight (and row part) as its dotted form."""
    for rule in family.rules:
        diffusers = rule.diffusers.format(i=7)
        underscored = diffusers.replace(".", "_")
        assert family.original_path(family.dotted_path(underscored)) == family.original_path(diffusers), underscored


@pytest.mark.parametrize("style", STYLES)
def test_mistyped_and_unknown_keys_are_refused_naming_the_key(style, tmp_path):
    key = STYLES[style][1]
    corpus, _ = flux_corpus()
    mistyped = "transformer_blocks.0.attn.to_qq"
    corpus.full(mistyped, H)
    typo = corpus.write(tmp_path / "typo.safetensors", style)
    with pytest.raises(ConvertError, match=rf"typo\.safetensors: module '{key(mistyped)}'.*not .*FLUX\.1 module path"):
        read_source(typo, base="flux1")
    part = save(tmp_path / "part.safetensors", {f"{key('transformer_blocks.0.attn.to_q')}.lokr_w3": torch.ones(2, 2),
                                                f"{key('transformer_blocks.0.attn.to_q')}.alpha": torch.tensor(1.0)})
    with pytest.raises(ConvertError, match=rf"unknown key '{key('transformer_blocks.0.attn.to_q')}\.lokr_w3'"):
        read_source(part, base="flux1")
    sd_names = corpus.write(tmp_path / "wrong-base.safetensors", style)
    with pytest.raises(ConvertError, match="wrong-base.safetensors: module"):
        read_source(sd_names, base="sd1")


@pytest.mark.parametrize("style, fmt", [("simpletuner", "lycoris-lora"), ("onetrainer-legacy", "onetrainer-lora")])
def test_lora_files_in_the_underscored_styles(style, fmt, tmp_path):
    """The same names on LoRA modules (LyCORIS `lora` / LoCon, OneTrainer's legacy LoRA): ΔW =
    up · down · alpha / rank, q / k / v stacked into the fused weight."""
    g, key, tensors, deltas = torch.Generator().manual_seed(4), STYLES[style][1], {}, {}
    for p in "qkv":
        down, up = torch.randn(2, H, generator=g), torch.randn(H, 2, generator=g)
        name = key(f"transformer_blocks.0.attn.to_{p}")
        tensors.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(4.0)})
        deltas[p] = up.double() @ down.double() * 4.0 / 2
    source = read_source(save(tmp_path / f"lora-{style}.safetensors", tensors), base="flux1")
    assert source.format == fmt and list(source.modules) == ["lora_unet_double_blocks_0_img_attn_qkv"]
    qkv = source.modules["lora_unet_double_blocks_0_img_attn_qkv"].dense()
    assert torch.allclose(qkv, torch.cat([deltas[p] for p in "qkv"]), atol=1e-5)


def test_peft_lokr_behind_transformer_takes_its_config_scale(tmp_path):
    """Without LyCORIS `alpha` tensors a `transformer.` LoKr file is PEFT's (diffusers'
    `save_lora_weights` prefix): alpha / r from its config for every module, full or decomposed."""
    corpus, _ = flux_corpus()
    modules = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v",
               "transformer_blocks.0.attn.to_out.0"]
    tensors = {f"transformer.{m}.{part}": t for m in modules for part, t in corpus.parts[m].items() if part != "alpha"}
    path = save(tmp_path / "peft.safetensors", tensors,
                {"lora_adapter_metadata": json.dumps({"peft_type": "LOKR", "r": 4, "alpha": 2})})
    source = read_source(path, base="flux1")
    assert source.format == "peft-lokr"

    def unscaled(m: str) -> torch.Tensor:
        parts = corpus.parts[m]
        return kron_blocks(parts["lokr_w1"], parts["lokr_w2"] if "lokr_w2" in parts else parts["lokr_w2_a"] @ parts["lokr_w2_b"])

    expected = {"lora_unet_double_blocks_0_img_attn_qkv": torch.cat([unscaled(m) for m in modules[:3]]) * 2 / 4,
                "lora_unet_double_blocks_0_img_attn_proj": unscaled(modules[3]) * 2 / 4}
    check_modules(source, expected, {"lora_unet_double_blocks_0_img_attn_proj"})

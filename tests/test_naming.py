"""Naming on the complete real-size key lists (each family's real config built on the meta device),
checked against diffusers' own single-file converters as the independent path."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from conftest import make_text_encoder, make_unet
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_open_clip_checkpoint,
)

from krona_core import families
from krona_core.adapters.apply import kohya_names
from krona_core.naming.clip import open_clip_to_hf
from krona_core.naming.kohya import KeyMapError, detect_naming, normalize_path, split_kohya_key
from krona_core.naming.unet import UNetKeyMap

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def real_unet(request):
    return request.param, families.get(request.param).build_unet()


def hf_keys(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict in the canonical Hugging Face layout (text_model. root, as in HF checkpoints)."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v for k, v in model.state_dict().items()}


def test_unet_map_equals_diffusers_converter(real_unet):
    base, unet = real_unet
    state = unet.state_dict()
    kmap = UNetKeyMap.from_names(n for n, _ in unet.named_modules() if n)
    checkpoint = {families.get(base).checkpoint_slot("unet", k, kmap).key: v for k, v in state.items()}
    assert all(k.startswith("model.diffusion_model.") for k in checkpoint)
    assert len(checkpoint) == len(state)  # injective
    converted = convert_ldm_unet_checkpoint(checkpoint, dict(unet.config))
    assert converted.keys() == state.keys()
    # the converter moves tensors without copying: identity proves every single key maps right
    assert all(converted[k] is v for k, v in state.items())
    # the reverse map, built from the ldm names alone, finds the same layout and inverts exactly
    reverse = UNetKeyMap.from_names(checkpoint)
    assert reverse.layout == kmap.layout
    for key in state:
        assert reverse.to_diffusers(kmap.to_ldm(key)) == key
    # the family's own layout (read off its config, no diffusers) is the built model's
    assert families.get(base).unet_key_map().layout == kmap.layout


def test_kohya_names_per_base(real_unet):
    base, unet = real_unet
    kmap = UNetKeyMap.from_names(n for n, _ in unet.named_modules() if n)
    family = families.get(base)
    paths = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear) and re.search(r"attn2\.to_k$", n)]
    table = kohya_names(unet, "unet")
    for path in paths:
        name = family.kohya_name("unet", path, kmap)
        assert family.kohya_name("unet", "diffusion_model." + kmap.to_ldm(path)) == name  # ComfyUI's form
        if base == "sdxl":  # kohya sd-scripts writes SGM/ldm names for SDXL
            assert name == "lora_unet_" + kmap.to_ldm(path).replace(".", "_")
            assert name.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
        else:
            assert name == "lora_unet_" + path.replace(".", "_")
        # readers accept either style: the model's name table resolves both aliases to the module
        aliases = kmap.kohya_aliases(path)
        assert name in aliases and len(aliases) == 2
        assert all(table[alias] == path for alias in aliases)
    assert families.detect({p: tuple(unet.get_submodule(p).weight.shape) for p in paths}) is family


def test_real_sdxl_known_names():
    """Spot checks against names seen in real SDXL files (kohya / ComfyUI)."""
    kmap = families.get("sdxl").unet_key_map()
    assert kmap.to_ldm("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    assert kmap.to_ldm("mid_block.attentions.0.transformer_blocks.9.attn2.to_out.0") == "middle_block.1.transformer_blocks.9.attn2.to_out.0"
    assert kmap.to_ldm("up_blocks.0.attentions.2.proj_out") == "output_blocks.2.1.proj_out"
    assert kmap.to_ldm("up_blocks.0.upsamplers.0.conv") == "output_blocks.2.2.conv"
    assert kmap.to_ldm("up_blocks.2.resnets.2.conv_shortcut") == "output_blocks.8.0.skip_connection"
    assert kmap.to_ldm("add_embedding.linear_2") == "label_emb.0.2"
    assert kmap.to_ldm("down_blocks.2.resnets.0.time_emb_proj") == "input_blocks.7.0.emb_layers.1"


@pytest.mark.parametrize("base,network", [("sd1", "te"), ("sdxl", "te1")])
def test_hf_clip_checkpoint_names(base, network):
    family = families.get(base)
    te = family.build_text_encoder(network)
    state = hf_keys(te)
    checkpoint = {family.checkpoint_slot(network, k).key: v for k, v in state.items()}
    prefix = family.text_encoder(network).checkpoint_prefix
    converted = convert_ldm_clip_checkpoint(checkpoint, remove_prefix=prefix)
    assert converted.keys() == state.keys()
    assert all(converted[k] is v for k, v in state.items())


def open_clip_checkpoint(state: dict[str, torch.Tensor], base: str, network: str) -> dict[str, torch.Tensor]:
    """An OpenCLIP-layout checkpoint written from Hugging Face tensors through the family's slots."""
    checkpoint: dict[str, torch.Tensor] = {}
    fused: dict[str, list] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        slot = families.get(base).checkpoint_slot(network, key)
        if slot.rows is not None:
            fused.setdefault(slot.key, [None, None, None])[slot.rows[0]] = value
        else:
            checkpoint[slot.key] = value.T if slot.transposed else value
    for key, parts in fused.items():
        checkpoint[key] = torch.cat(parts, dim=0)
    return checkpoint


@pytest.mark.parametrize("base,network", [("sd2", "te"), ("sdxl", "te2")])
def test_open_clip_checkpoint_names(base, network):
    te = families.get(base).build_text_encoder(network)
    state = hf_keys(te)
    prefix = families.get(base).text_encoder(network).checkpoint_prefix
    checkpoint = open_clip_checkpoint(state, base, network)
    hidden = te.config.hidden_size
    converted = convert_open_clip_checkpoint(SimpleNamespace(config=SimpleNamespace(hidden_size=hidden)), checkpoint, prefix=prefix)
    expected = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    if network == "te":  # diffusers' SD2 encoder has no projection; the map covers what exists
        expected.pop("text_projection.weight", None)
    assert converted.keys() >= expected.keys()
    for key, value in expected.items():
        assert tuple(converted[key].shape) == tuple(value.shape), key
    # the reverse map names every OpenCLIP key it can
    for key in checkpoint:
        stripped = key[len(prefix):]
        if stripped.startswith("transformer.resblocks"):
            assert set(open_clip_to_hf(stripped)) <= set(state)


def test_open_clip_row_slices_move_real_values():
    """Small real tensors: q/k/v land in the right rows, text_projection transposed."""
    te = make_text_encoder(width=16, projection=True)
    state = hf_keys(te)
    checkpoint = open_clip_checkpoint(state, "sdxl", "te2")
    converted = convert_open_clip_checkpoint(te, checkpoint, prefix="conditioner.embedders.1.model.")
    for key, value in state.items():
        if key in converted:
            assert torch.equal(converted[key], value), key
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in converted


def test_tiny_unet_layouts_round_trip(base):
    """Reduced UNets (fewer levels, one resnet per level) place blocks by their own layout."""
    unet = make_unet(base)
    kmap = UNetKeyMap.from_names(n for n, _ in unet.named_modules() if n)
    state = unet.state_dict()
    ldm = {kmap.to_ldm(k): k for k in state}
    assert len(ldm) == len(state)
    reverse = UNetKeyMap.from_names(ldm)
    assert reverse.layout == kmap.layout
    assert all(reverse.to_diffusers(k) == v for k, v in ldm.items())


def test_naming_detection_and_errors():
    assert detect_naming(["down_blocks.0.resnets.0.conv1"]) == "diffusers"
    assert detect_naming(["input_blocks.1.0.in_layers.2"]) == "ldm"
    assert detect_naming(["text_model.encoder.layers.0.self_attn.q_proj"]) == "hf_clip"
    assert detect_naming(["encoder.layers.3.mlp.fc1"]) == "hf_clip"
    assert detect_naming(["transformer.resblocks.0.attn.in_proj_weight"]) == "open_clip"
    with pytest.raises(KeyMapError):
        detect_naming(["foo.bar"])
    with pytest.raises(KeyMapError, match="no text encoder"):
        families.get("sd1").checkpoint_slot("te2", "text_model.encoder.layers.0.self_attn.q_proj.weight")
    kmap = UNetKeyMap.from_names(n for n, _ in make_unet("sd1").named_modules() if n)
    with pytest.raises(KeyMapError, match="not a diffusers UNet name"):
        kmap.to_ldm("down_blocks.7.resnets.0.conv1")
    assert split_kohya_key("lora_te2_text_model_encoder_layers_0_mlp_fc1") == ("te2", "text_model_encoder_layers_0_mlp_fc1")
    assert normalize_path("te", "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1") == "text_model.encoder.layers.0.mlp.fc1"
    assert normalize_path("te", "encoder.layers.0.mlp.fc1") == "text_model.encoder.layers.0.mlp.fc1"
    assert normalize_path("unet", "diffusion_model.input_blocks.1.1.proj_in") == "input_blocks.1.1.proj_in"

"""The model-family registry: one entry per family, detected from every state-dict form the pack
meets (diffusers UNet, ldm/SGM single file, ComfyUI model, kohya-named adapter), with the
family's own names, defaults and metadata."""

from __future__ import annotations

import pytest
import torch

from krona_core import families
from krona_core.families import FamilyError
from krona_core.naming.unet import UNetKeyMap

EXPECTED = {
    # name: (cross-attention width, text encoders (network, width), kohya UNet style, steps, resolution, comfy class)
    "sd1": (768, [("te", 768)], "diffusers", 500, 512, "SD15"),
    "sd2": (1024, [("te", 1024)], "diffusers", 500, 512, "SD20"),
    "sdxl": (2048, [("te1", 768), ("te2", 1280)], "ldm", 1000, 1024, "SDXL"),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def family(request):
    return families.get(request.param)


@pytest.fixture(scope="module")
def unet_shapes(family):
    unet = family.build_unet()  # the real architecture on the meta device
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}, UNetKeyMap.from_names(unet.state_dict())


def test_the_registry_is_every_family_module():
    assert families.names() == ("sd1", "sd2", "sdxl", "flux1", "chroma", "flux2", "sd3", "qwen_image", "lumina2",
                                "z_image", "wan")
    with pytest.raises(FamilyError, match="unknown base model 'flux'.*sd1, sd2, sdxl, flux1"):
        families.get("flux")
    assert families.find("unknown") is None


def test_numbers_of_each_family(family):
    width, encoders, style, steps, resolution, comfy = EXPECTED[family.name]
    assert family.cross_attention_dim == width
    assert [(t.network, t.width) for t in family.text_encoders] == encoders
    assert family.networks == ("unet", *(n for n, _ in encoders))
    assert family.kohya_unet_style == style
    assert (family.default_steps, family.default_resolution, family.prediction) == (steps, resolution, "epsilon")
    assert families.for_comfy_model(comfy) is family
    assert family.default_targets == "attn"


def test_detected_from_a_diffusers_unet_state_dict(family, unet_shapes):
    shapes, _ = unet_shapes
    assert families.detect(shapes) is family


def test_detected_from_a_comfyui_model_state_dict(family, unet_shapes):
    shapes, kmap = unet_shapes
    comfy = {"diffusion_model." + kmap.to_ldm(k): v for k, v in shapes.items()}
    assert families.detect(comfy) is family


def test_detected_from_a_single_file_checkpoint(family, unet_shapes):
    shapes, kmap = unet_shapes
    checkpoint = {family.checkpoint_slot("unet", k, kmap).key: v for k, v in shapes.items()}
    for encoder in family.text_encoders:
        te = family.build_text_encoder(encoder.network)
        for key, value in te.state_dict().items():
            key = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
            if not key.endswith("position_ids"):
                checkpoint[family.checkpoint_slot(encoder.network, key).key] = tuple(value.shape)
    assert families.detect(checkpoint) is family
    # the text-encoder keys alone (shapes unknown, as a file listing gives them) tell the family too
    assert families.detect({k: () for k in checkpoint if not k.startswith(family.unet_prefix)}) is family
    modules = family.checkpoint_modules(checkpoint)
    assert any(name.startswith("lora_te") for name in modules) and any(name.startswith("lora_unet_") for name in modules)


def test_detected_from_kohya_adapter_names(family, unet_shapes):
    shapes, kmap = unet_shapes
    adapter = {family.kohya_name("unet", k[: -len(".weight")], kmap): v for k, v in shapes.items()
               if k.endswith("attn2.to_k.weight")}
    assert families.detect(adapter) is family


def test_text_encoders_by_width():
    assert families.for_text_encoder(768) == ("te", families.get("sd1"))  # CLIP-L alone reads as SD1 (priority)
    assert families.for_text_encoder(1024) == ("te", families.get("sd2"))
    assert families.for_text_encoder(1280) == ("te2", families.get("sdxl"))
    assert families.for_text_encoder(4096) is None


def test_file_metadata_and_kohya_versions(family):
    meta = family.metadata()
    assert meta["modelspec.architecture"].endswith("/lora")
    assert families.for_ss(meta["ss_base_model_version"]) is family


def test_unknown_models_are_not_claimed():
    assert families.detect({"blocks.0.attn.qkv.weight": (3072, 1024)}) is None
    assert families.detect({"x.attn2.to_k.weight": (320, 999)}) is None
    with pytest.raises(FamilyError, match="my.safetensors: not a model of a known family"):
        families.require({"foo": (1, 2)}, "my.safetensors")


def test_naming_needs_no_diffusers(tmp_path):
    """Names come from each family's config: a ComfyUI install (no diffusers) can convert LoRAs."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "from krona_core import families\n"
            "f = families.get('sdxl')\n"
            "print(f.kohya_name('unet', 'down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"


def test_build_is_the_real_size(family):
    unet = family.build_unet()
    assert unet.device == torch.device("meta")
    assert sum(p.numel() for p in unet.parameters()) > 800_000_000

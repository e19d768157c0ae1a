"""The diffusion-transformer families (Flux.1, Chroma, Flux.2, SD3, Qwen-Image, Lumina 2, Z-Image,
Wan): detection from every state-dict form (diffusers, original / ComfyUI with or without a
prefix, kohya-named adapter), the one naming rule, fused weights, metadata. The real transformers
are built on the meta device (every name and shape, no memory)."""

from __future__ import annotations

import pytest
import torch

from krona_core import families
from krona_core.naming.dit import Part
from krona_core.naming.kohya import KeyMapError, kohya_key

DIT = ("flux1", "chroma", "flux2", "sd3", "qwen_image", "lumina2", "z_image", "wan")
#: (diffusers class, ComfyUI model_config class, modelspec.architecture) of each family
EXPECTED = {
    "flux1": ("FluxTransformer2DModel", "Flux", "flux-1-dev/lora"),
    "chroma": ("ChromaTransformer2DModel", "Chroma", "chroma/lora"),
    "flux2": ("Flux2Transformer2DModel", "Flux2", "Flux.2-dev/lora"),
    "sd3": ("SD3Transformer2DModel", "SD3", "stable-diffusion-3/lora"),
    "qwen_image": ("QwenImageTransformer2DModel", "QwenImage", "Qwen-Image/lora"),
    "lumina2": ("Lumina2Transformer2DModel", "Lumina2", "lumina-2/lora"),
    "z_image": ("ZImageTransformer2DModel", "ZImage", "z-image/lora"),
    "wan": ("WanTransformer3DModel", "WAN21_T2V", "wan2.1/lora"),
}


@pytest.fixture(scope="module", params=DIT)
def family(request):
    return families.get(request.param)


@pytest.fixture(scope="module")
def real(family):
    """(diffusers state-dict shapes, original weight shapes) of the real transformer."""
    model = family.build_unet()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, family.weight_shapes(model)


def test_numbers_of_each_family(family):
    cls, comfy, arch = EXPECTED[family.name]
    assert family.diffusers_class == cls and family.prediction == "flow" and family.networks == ("unet",)
    assert families.for_comfy_model(comfy) is family
    assert family.metadata()["modelspec.architecture"] == arch
    assert families.for_ss(family.metadata()["ss_base_model_version"]) is family
    assert family.text_encoder_network(4096) is None


def test_detected_from_a_diffusers_state_dict(family, real):
    shapes, _ = real
    assert families.detect(shapes) is family
    assert families.detect({"transformer." + k: v for k, v in shapes.items()}) is family  # PEFT-style prefix


@pytest.mark.parametrize("prefix", ["", "diffusion_model.", "model.diffusion_model."])
def test_detected_from_original_names(family, real, prefix):
    """The original release (bare keys), ComfyUI's model (diffusion_model.) and a ComfyUI-saved
    checkpoint (model.diffusion_model.)."""
    _, original = real
    assert families.detect({f"{prefix}{path}.weight": shape for path, shape in original.items()}) is family


def test_detected_from_kohya_adapter_names(family, real):
    _, original = real
    assert families.detect({kohya_key("unet", path): shape for path, shape in original.items()}) is family


def test_every_diffusers_linear_has_an_original_weight(family):
    """Fused weights are assembled from their parts (rows add up, inputs agree): the ComfyUI shapes."""
    model = family.build_unet()
    original = family.weight_shapes(model)
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        try:
            path, part = family.original_path(name)
        except KeyMapError:
            continue  # the adaLN layers whose shift / scale halves ComfyUI swaps (not mapped)
        rows, cols = original[path]
        assert cols == module.in_features
        if part is None:
            assert rows == module.out_features, name
        else:
            assert part.rows(rows)[1] == module.out_features, name


def test_the_one_naming_rule():
    """kohya name = lora_unet_ + the ComfyUI path, from every form a module path comes in."""
    flux = families.get("flux1")
    for path in ("double_blocks.3.img_attn.proj", "diffusion_model.double_blocks.3.img_attn.proj",
                 "model.diffusion_model.double_blocks.3.img_attn.proj", "transformer_blocks.3.attn.to_out.0",
                 "transformer.transformer_blocks.3.attn.to_out.0"):
        assert flux.kohya_name("unet", path) == "lora_unet_double_blocks_3_img_attn_proj"
    assert flux.kohya_name("unet", "single_transformer_blocks.7.proj_out") == "lora_unet_single_blocks_7_linear2"
    assert families.get("sd3").kohya_name("unet", "transformer.transformer_blocks.0.ff_context.net.2") == \
        "lora_unet_joint_blocks_0_context_block_mlp_fc2"
    assert families.get("wan").kohya_name("unet", "blocks.2.attn2.add_k_proj") == "lora_unet_blocks_2_cross_attn_k_img"
    assert families.get("qwen_image").kohya_name("unet", "transformer.transformer_blocks.1.attn.to_q") == \
        "lora_unet_transformer_blocks_1_attn_to_q"


def test_fused_weights_are_one_factor_pair():
    """A diffusers slice of a fused weight is refused as a module name, naming the fused weight."""
    flux = families.get("flux1")
    assert flux.original_path("single_transformer_blocks.0.proj_mlp") == ("single_blocks.0.linear1", Part(3, (1, 1, 1, 4)))
    assert Part(3, (1, 1, 1, 4)).rows(21504) == (9216, 12288)  # real Flux: 3 × 3072 q, k, v then 12288 MLP rows
    with pytest.raises(KeyMapError, match=r"fused FLUX.1 weight 'double_blocks.0.img_attn.qkv'.*lora_unet_double_blocks_0_img_attn_qkv"):
        flux.kohya_name("unet", "transformer.transformer_blocks.0.attn.to_k")
    assert families.get("lumina2").original_path("layers.4.attn.to_v") == ("layers.4.attention.qkv", Part(2, (3, 1, 1)))
    with pytest.raises(KeyMapError, match="does not split"):
        Part(0, (1, 1, 1, 4)).rows(100)


def test_refusals_name_what_was_expected():
    flux = families.get("flux1")
    with pytest.raises(KeyMapError, match="not a FLUX.1 module path"):
        flux.kohya_name("unet", "down_blocks.0.attentions.0.proj_in")
    with pytest.raises(KeyMapError, match="diffusion model only"):
        flux.kohya_name("te1", "text_model.encoder.layers.0.self_attn.q_proj")


def test_sd_models_are_not_claimed_by_transformer_families():
    """SD UNets' transformer_blocks / attn1 names must not read as Wan's blocks or Flux's blocks."""
    sd1 = families.get("sd1").build_unet()
    assert families.detect({k: tuple(v.shape) for k, v in sd1.state_dict().items()}) is families.get("sd1")


def test_newest_comfyui_key_maps_by_reading():
    """Families the ComfyUI here (0.3.64) lacks, checked against the newest ComfyUI source's own
    maps (read from Comfy-Org/ComfyUI: comfy/utils.py z_image_to_diffusers, comfy/lora.py
    model_lora_keys_unet): recorded (diffusers key → ComfyUI key, rows) entries."""
    z = families.get("z_image")
    dim = 3840  # z_image_to_diffusers: to_q (0, 0, dim), to_k (0, dim, dim), to_v (0, 2·dim, dim)
    for member, start in (("to_q", 0), ("to_k", dim), ("to_v", 2 * dim)):
        path, part = z.original_path(f"layers.5.attention.{member}")
        assert path == "layers.5.attention.qkv" and part.rows(3 * dim) == (start, dim)
    assert z.original_path("context_refiner.1.attention.to_out.0") == ("context_refiner.1.attention.out", None)
    assert z.original_path("noise_refiner.0.feed_forward.w2") == ("noise_refiner.0.feed_forward.w2", None)
    # model_lora_keys_unet maps lora_unet_<diffusion_model path, dots → underscores> for every model
    assert z.kohya_name("unet", "diffusion_model.layers.5.attention.qkv") == "lora_unet_layers_5_attention_qkv"
    assert families.get("flux2").kohya_name("unet", "single_transformer_blocks.3.attn.to_qkv_mlp_proj") == \
        "lora_unet_single_blocks_3_linear1"


def test_diffusers_folder_class_names_the_family(tmp_path, family):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text('{"_class_name": "%s"}' % family.diffusers_class)
    assert families.for_diffusers_folder(tmp_path) is family
    assert families.for_diffusers_folder(tmp_path / "transformer") is family

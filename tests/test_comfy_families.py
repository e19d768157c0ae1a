"""The diffusion-transformer families in the real ComfyUI: for every family this ComfyUI detects, a
tiny seeded model in ComfyUI's own format (built with ComfyUI's own classes, loaded with UNETLoader)
and a KronA file with the family's names. Apply KronA equals ComfyUI core's LoraLoaderModelOnly on
the same file, merge equals bypass, and the file merged into the checkpoint equals Apply KronA —
compared on the denoised latent of one sampling step (conditioning from a test-only node instead of
the families' multi-GB text encoders)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from helpers.krona_files import checkpoint_shapes, random_dit_krona
from helpers.tiny_dit import MAP_CONFIGS, cached_tiny_dit, comfy_diffusers_maps
from krona_core import families
from krona_core.convert.merge import merge_into_checkpoint
from krona_core.files.reader import read
from krona_core.naming.kohya import KeyMapError

pytestmark = pytest.mark.comfy

#: family: (conditioning width, pooled width, latent frames (0: an image latent), file dtype)
CASES = {
    "sd3": (48, 32, 0, "float32"),
    "wan": (4096, 0, 1, "float32"),
    "flux1": (4096, 768, 0, "bfloat16"),
    "chroma": (4096, 768, 0, "bfloat16"),  # ComfyUI 0.3.64 reads a pooled vector it does not use
    "lumina2": (32, 0, 0, "bfloat16"),
    "qwen_image": (3584, 0, 0, "bfloat16"),
}
MERGED = ("sd3", "wan")  # float32 files: the merged checkpoint is compared without bf16 rounding


def graph(unet: str, family: str, chain: tuple = ()) -> dict:
    width, pooled, frames, _ = CASES[family]
    g = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "cond": {"class_type": "KronATestConditioning", "inputs": {"width": width, "tokens": 4, "pooled": pooled,
                                                              "mask": family == "lumina2", "seed": 3}},
        "latent": ({"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": frames, "batch_size": 1}}
                   if frames else {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}),
    }
    model = ["unet", 0]
    for i, (kind, inputs) in enumerate(chain):
        g[f"a{i}"] = {"class_type": kind, "inputs": {"model": model, **inputs}}
        model = [f"a{i}", 0]
    g["sampler"] = {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 5, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["latent", 0], "denoise": 1.0}}
    g["probe"] = {"class_type": "KronATestLatentValues", "inputs": {"samples": ["sampler", 0], "tag": family}}
    return g


def latent(server, g: dict) -> np.ndarray:
    history = server.run(g)
    return np.array(json.loads(history["outputs"]["probe"]["text"][0])["values"], dtype=np.float64)


def apply(name: str, bypass: bool = False) -> tuple:
    return ("ApplyKronA", {"krona_name": name, "strength_model": 1.0, "bypass": bypass})


@pytest.fixture(scope="module")
def prepared(comfy_server, tmp_path_factory):
    """family → (tiny model, KronA file), both made reachable to ComfyUI (UNETLoader, Apply KronA and
    the loras folder of core's loader), built once per family."""
    done: dict[str, tuple[Path, Path]] = {}

    def prepare(family: str) -> tuple[Path, Path]:
        if family not in done:
            model = cached_tiny_dit(comfy_server.comfyui_path, family, CASES[family][3])
            krona = random_dit_krona(model, tmp_path_factory.mktemp(family) / f"{family}-test.krona.safetensors",
                                     family, seed=1)
            for folder, path in (("diffusion_models", model), ("krona", krona), ("loras", krona)):
                comfy_server.add_model(folder, path)
            done[family] = (model, krona)
        return done[family]

    yield prepare
    comfy_server.free()


@pytest.mark.parametrize("family", sorted(CASES))
def test_apply_equals_loraloader_and_bypass_equals_merge(comfy_server, prepared, family):
    model, krona = prepared(family)
    assert families.detect(checkpoint_shapes(model)) is families.get(family)  # ComfyUI's own names and shapes
    with safe_open(str(model), "pt") as fh:  # the model_config class ComfyUI's detection read the file as
        assert families.for_comfy_model(fh.metadata()["comfy_model"]) is families.get(family)
    file = read(krona)
    assert file.base_model == family and file.metadata["modelspec.architecture"].endswith("/lora")
    log_start = len(comfy_server.log_text())
    base = latent(comfy_server, graph(model.name, family))
    merged = latent(comfy_server, graph(model.name, family, (apply(krona.name),)))
    core = latent(comfy_server, graph(model.name, family, (("LoraLoaderModelOnly", {"lora_name": krona.name, "strength_model": 1.0}),)))
    bypass = latent(comfy_server, graph(model.name, family, (apply(krona.name, bypass=True),)))
    log = comfy_server.log_text()[log_start:]
    assert "lora key not loaded" not in log and "not found in the model" not in log, log[-3000:]
    scale = max(1.0, float(np.abs(core).max()))
    # measured here: effect 0.36 % (Lumina 2) … 34 % (Chroma) of the output scale, core 0 exactly,
    # bypass ≤ 8e-7 (float32 rounding of W·x + ΔW·x against (W + ΔW)·x)
    assert np.abs(merged - base).max() > 1e-3 * scale, "the adapter has no visible effect"
    assert np.abs(merged - core).max() <= 1e-5 * scale
    assert np.abs(bypass - merged).max() <= 1e-5 * scale


def trained_flux_krona(out: Path) -> Path:
    """A file of the CLI trainer (`krona_core.train`, diffusers backend) for FLUX.1: two steps on a
    diffusers FluxTransformer2DModel of the tiny ComfyUI model's config (3072 wide, one double and one
    single block, random weights), attn preset (single-block linear1 as one fused pair included)."""
    from krona_core.train.config import TrainConfig
    from krona_core.train.data import examples_from_latents
    from krona_core.train.dit_backend import DiTDenoiser
    from krona_core.train.embeddings import EmbeddingTable
    from krona_core.train.loop import train

    torch.manual_seed(0)
    transformer = families.get("flux1").build_unet("cpu", num_layers=1, num_single_layers=1)
    g = torch.Generator().manual_seed(1)
    table = {"p": {"encoder_hidden_states": torch.randn(1, 4, 4096, generator=g), "pooled_projections": torch.randn(1, 768, generator=g)}}
    denoiser = DiTDenoiser(transformer, EmbeddingTable(table))
    examples = examples_from_latents(torch.randn(1, 16, 8, 8, generator=g), ["p"])
    result = train(denoiser, examples, TrainConfig(steps=2, lr=5e-2, grad_accum=1, batch_size=1, seed=0))
    return Path(result.handles[0].save(str(out)))


def test_a_cli_trained_flux_file_loads_in_core_loraloader_as_in_apply(comfy_server, prepared, tmp_path):
    model, _ = prepared("flux1")
    krona = trained_flux_krona(tmp_path / "flux1-cli.krona.safetensors")
    w1, w2 = read(krona).modules["lora_unet_single_blocks_0_linear1"]
    assert (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]) == (21504, 3072)  # q, k, v + MLP input, one pair
    for folder in ("krona", "loras"):
        comfy_server.add_model(folder, krona)
    log_start = len(comfy_server.log_text())
    base = latent(comfy_server, graph(model.name, "flux1"))
    applied = latent(comfy_server, graph(model.name, "flux1", (apply(krona.name),)))
    core = latent(comfy_server, graph(model.name, "flux1", (("LoraLoaderModelOnly", {"lora_name": krona.name, "strength_model": 1.0}),)))
    log = comfy_server.log_text()[log_start:]
    assert "lora key not loaded" not in log and "not found in the model" not in log, log[-3000:]
    scale = max(1.0, float(np.abs(core).max()))
    assert np.abs(applied - base).max() > 1e-3 * scale, "the adapter has no visible effect"
    assert np.abs(applied - core).max() <= 1e-5 * scale


@pytest.mark.parametrize("family", MERGED)
def test_merged_checkpoint_equals_apply(comfy_server, prepared, family, tmp_path):
    model, krona = prepared(family)
    out = tmp_path / f"{family}-merged.safetensors"
    assert merge_into_checkpoint(model, read(krona), 1.0, out)["base"] == family
    comfy_server.add_model("diffusion_models", out)
    merged = latent(comfy_server, graph(out.name, family))
    applied = latent(comfy_server, graph(model.name, family, (apply(krona.name),)))
    assert np.abs(merged - applied).max() <= 1e-4 * max(1.0, float(np.abs(applied).max()))


#: the modulations whose (shift, scale) halves ComfyUI swaps (in one block or all): refused, never misnamed
REFUSED = {"flux1": {"norm_out.linear.weight"},
           "sd3": {"norm_out.linear.weight", "transformer_blocks.N.norm1_context.linear.weight"}}


@pytest.mark.parametrize("family", sorted(MAP_CONFIGS))
def test_diffusers_names_equal_comfyuis_own_map(comfy_server, family, tmp_path):
    """The pack's diffusers → original rules against ComfyUI's own (comfy.utils.flux_to_diffusers,
    mmdit_to_diffusers) on the real model's config: every Linear weight either maps to the same
    ComfyUI key and rows, or — where ComfyUI rewrites the values (swapped adaLN halves) — is refused."""
    maps = comfy_diffusers_maps(comfy_server.comfyui_path, tmp_path)[family]
    fam = families.get(family)
    model = fam.build_unet()
    linear = {n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    original = fam.weight_shapes(model)
    checked, refused = 0, set()
    for key, (target, rows) in maps.items():
        if key not in linear:
            continue  # biases, norms, convs: not adapter targets
        try:
            path, part = fam.original_path(key.removesuffix(".weight"))
        except KeyMapError:
            refused.add(re.sub(r"\.\d+\.", ".N.", key))
            continue
        assert rows != "transformed", f"{key}: ComfyUI rewrites its values, the pack must refuse it"
        assert path + ".weight" == target, key
        assert (part is None) if rows is None else (part is not None and list(part.rows(original[path][0])) == rows), key
        checked += 1
    assert refused == REFUSED[family]
    assert checked >= 0.9 * len(linear), f"{checked} of {len(linear)} Linear weights are in ComfyUI's map"

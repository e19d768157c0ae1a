"""Other trainers' LoKr files of a transformer family in the real ComfyUI: ComfyUI core's
LoraLoaderModelOnly applies a SimpleTuner (`lycoris_…`), OneTrainer legacy (`lora_transformer_…`)
or OneTrainer / ai-toolkit diffusers-named (`transformer.…` + alpha) file — q, k and v as separate
modules on the fused qkv, as those trainers write them (key forms: tests/test_dit_trainer_lokr.py)
— exactly as the checkpoint krona_core merges from the same file (fused slices assembled), on the
tiny SD3 and FLUX.1 of tests/test_comfy_families.py in float32 (ComfyUI 0.3.64 maps all three
styles for SD3 and FLUX: `model_lora_keys_unet` in comfy/lora.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from helpers.krona_files import checkpoint_shapes
from helpers.tiny_dit import cached_tiny_dit
from test_comfy_families import graph, latent
from test_dit_trainer_lokr import STYLES

from krona_core import families
from krona_core.adapters.targets import path_matches
from krona_core.convert.merge import merge_into_checkpoint
from krona_core.convert.sources import read_source
from krona_core.ops.shapes import choose_shape

pytestmark = pytest.mark.comfy
FAMILIES = ("sd3", "flux1")  # both float32: the merged checkpoint is compared without bf16 rounding


def trainer_file(model: Path, base: str, style: str, out: Path, seed: int) -> Path:
    """A LoKr file on every attention and MLP weight of the tiny model under its diffusers names
    (row slices of a fused weight as separate modules), in `style`'s keys."""
    family, g = families.get(base), torch.Generator().manual_seed(seed)
    key, tensors = STYLES[style][1], {}
    for slot, shape in sorted(family.checkpoint_modules(checkpoint_shapes(model)).values(), key=lambda v: v[0].key):
        path = family.original_path(slot.key.removesuffix(".weight"))[0]
        if len(shape) != 2 or not path_matches(path, True, "attn+ff"):
            continue
        split = [(d, part) for d, part in family.key_map().parts_of(path) if part is not None]
        whole = [(d, part) for d, part in family.key_map().parts_of(path) if part is None][:1]
        for diffusers, part in split or whole:
            rows = part.rows(shape[0])[1] if part else shape[0]
            kron = choose_shape((rows, shape[1]), 8, 4)
            name = key(diffusers)
            tensors[f"{name}.lokr_w1"] = torch.randn(kron.w1_shape, generator=g)
            tensors[f"{name}.lokr_w2"] = torch.randn(kron.w2_shape, generator=g) * 0.3 / shape[1] ** 0.5
            tensors[f"{name}.alpha"] = torch.tensor(float(kron.w1_shape[0]))  # ignored: both halves full
    save_file(tensors, str(out))
    return out


@pytest.fixture(scope="module")
def models(comfy_server):
    """family → its tiny float32 model, reachable to UNETLoader, built once."""
    done: dict[str, Path] = {}

    def model(family: str) -> Path:
        if family not in done:
            done[family] = cached_tiny_dit(comfy_server.comfyui_path, family, "float32")
            comfy_server.add_model("diffusion_models", done[family])
        return done[family]

    yield model
    comfy_server.free()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("style", STYLES)
def test_core_loraloader_equals_the_merged_checkpoint(comfy_server, models, family, style, tmp_path):
    model = models(family)
    path = trainer_file(model, family, style, tmp_path / f"{family}-{style}.safetensors", seed=list(STYLES).index(style))
    comfy_server.add_model("loras", path)
    source = read_source(path, base=family)
    assert source.format == STYLES[style][0]
    assert any(module.kronecker() is None for module in source.modules.values())  # assembled q/k/v
    merged = tmp_path / f"{family}-{style}-merged.safetensors"
    merge_into_checkpoint(model, source, 1.0, merged)
    comfy_server.add_model("diffusion_models", merged)
    log_start = len(comfy_server.log_text())
    core = latent(comfy_server, graph(model.name, family, (("LoraLoaderModelOnly", {"lora_name": path.name,
                                                                                    "strength_model": 1.0}),)))
    log = comfy_server.log_text()[log_start:]
    assert "lora key not loaded" not in log, log[-3000:]
    baked = latent(comfy_server, graph(merged.name, family))
    base = latent(comfy_server, graph(model.name, family))
    scale = max(1.0, float(np.abs(core).max()))
    # measured here: the file moves the latent by 16–21 % of the output scale; core − merged is 0 exactly
    assert np.abs(core - base).max() > 1e-3 * scale, "the file has no visible effect"
    assert np.abs(core - baked).max() <= 1e-4 * scale

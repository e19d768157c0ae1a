"""Smoke tests of the headless-ComfyUI test tooling (tests/helpers) against a real checkout.

They need ``COMFYUI_PATH`` (a ComfyUI checkout) and skip without it. They exercise only the
host and the tiny checkpoints, not the pack, so a failure here points at the environment or the
helpers: start a server, list nodes, run txt2img on the tiny SD1.5 and SDXL checkpoints, and
apply a full-factor LoKr file with ComfyUI's own LoraLoader.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from helpers.comfy_server import (  # noqa: E402
    ComfyPromptError, ComfyServer, comfyui_path_from_env, txt2img_graph)
from helpers.tiny_comfy import cached_checkpoint  # noqa: E402

pytestmark = pytest.mark.comfy  # runs without COMFYUI_PATH: skipped (tests/conftest.py)

# ComfyUI maps kohya-style diffusers names to the tiny UNet through its own key map
# (comfy.lora.model_lora_keys_unet / comfy.utils.unet_to_diffusers); these exist in the tiny
# SD1.5 UNet (one level: down_blocks_0 = input_blocks.1, mid_block = middle_block.1,
# up_blocks_0.attentions_{0,1} = output_blocks.{0,1}.1).
LOKR_TARGETS = {
    # module path (kohya, dots -> underscores): (out_features, in_features)
    "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (320, 320),
    "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k": (320, 320),
    "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v": (320, 320),
    "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0": (320, 320),
    "mid_block_attentions_0_transformer_blocks_0_attn2_to_k": (320, 768),
    "mid_block_attentions_0_transformer_blocks_0_attn2_to_v": (320, 768),
    "up_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q": (320, 320),
}

DUMMY_PACK = textwrap.dedent('''
    class KronATestEcho:
        """A trivial node proving that custom node packs are linked and imported."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("INT", {"default": 3, "min": 0, "max": 100})}}

        RETURN_TYPES = ("INT",)
        FUNCTION = "run"
        CATEGORY = "testing"

        def run(self, value):
            return (value,)


    NODE_CLASS_MAPPINGS = {"KronATestEcho": KronATestEcho}
''')


def write_lokr(path: Path, seed: int = 0) -> Path:
    """A full-factor LyCORIS LoKr file (w1: 64x8 per DESIGN.md, w2 carries the rest)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {}
    a1, a2 = 64, 8
    for name, (out_f, in_f) in LOKR_TARGETS.items():
        w1 = torch.randn(a1, a2, generator=g) * 0.25
        w2 = torch.randn(out_f // a1, in_f // a2, generator=g) * 0.25
        sd[f"lora_unet_{name}.lokr_w1"] = w1.to(torch.float16)
        sd[f"lora_unet_{name}.lokr_w2"] = w2.to(torch.float16)
        sd[f"lora_unet_{name}.alpha"] = torch.tensor(1.0)
    save_file(sd, str(path), metadata={"ss_network_module": "lycoris.kohya",
                                       "ss_network_args": '{"algo": "lokr"}'})
    return path


def _single_image(srv: ComfyServer, graph: dict) -> np.ndarray:
    history = srv.run(graph, timeout=900)
    images = srv.images(history)
    assert len(images) == 1, history.get("outputs")
    img = images[0]
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3), img.shape
    return img


def _assert_not_constant(img: np.ndarray) -> None:
    assert img.std() > 2.0, f"image is (nearly) constant: std {img.std():.3f}"
    assert len(np.unique(img)) > 16


@pytest.fixture(scope="module")
def dummy_pack(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("packs") / "krona-test-echo"
    d.mkdir()
    (d / "__init__.py").write_text(DUMMY_PACK, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def server(dummy_pack):
    ckpt15 = cached_checkpoint("sd15", seed=0)
    with ComfyServer(comfyui_path_from_env(), custom_nodes={"krona-test-echo": dummy_pack},
                     models={"checkpoints": [ckpt15]}) as srv:
        srv.ckpt15 = ckpt15.name
        yield srv


@pytest.fixture(scope="module")
def base_image(server) -> np.ndarray:
    return _single_image(server, txt2img_graph(server.ckpt15, "smoke_sd15"))


def test_object_info_lists_core_and_custom_nodes(server):
    info = server.object_info()
    for node in ("CheckpointLoaderSimple", "LoraLoader", "KSampler", "SaveImage", "KronATestEcho"):
        assert node in info, node
    assert server.ckpt15 in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert server.custom_node_import_failures() == [], server.log_tail()
    # the checkout is left alone: models, outputs and custom_nodes live in the temp base dir
    assert server.base_dir is not None and server.base_dir.is_dir()


def test_invalid_graph_reports_node_errors(server):
    graph = txt2img_graph("no-such-checkpoint.safetensors", "smoke_bad")
    with pytest.raises(ComfyPromptError) as ei:
        server.queue(graph)
    assert "ckpt" in ei.value.node_errors
    assert "no-such-checkpoint" in str(ei.value)


def test_sd15_txt2img(server, base_image):
    _assert_not_constant(base_image)
    out = list(server.output_dir.glob("smoke_sd15_*.png"))
    assert out, "SaveImage wrote nothing to the temporary output dir"
    log = server.log_text()
    assert "model_type EPS" in log


def test_sd15_lokr_via_loraloader_changes_image(server, base_image, tmp_path):
    lokr = write_lokr(tmp_path / "smoke_lokr.safetensors", seed=7)
    name = server.add_model("loras", lokr)
    img = _single_image(server, txt2img_graph(server.ckpt15, "smoke_sd15_lokr", loras=[(name, 1.0)]))
    _assert_not_constant(img)
    diff = np.abs(img.astype(np.int16) - base_image.astype(np.int16))
    assert diff.mean() > 1.0, f"LoKr at strength 1 barely changed the image (mean |diff| {diff.mean():.3f})"
    not_loaded = [l for l in server.log_text().splitlines() if "lora key not loaded" in l]
    assert not not_loaded, not_loaded
    # strength 0 is the identity: same seed -> the same pixels as without the LoraLoader
    img0 = _single_image(server, txt2img_graph(server.ckpt15, "smoke_sd15_lokr0", loras=[(name, 0.0)]))
    np.testing.assert_array_equal(img0, base_image)


def test_sd15_controlnet_changes_image(server, base_image, tmp_path):
    from PIL import Image

    cn = server.add_model("controlnet", cached_checkpoint("sd15_controlnet", seed=0))
    hint = np.zeros((64, 64, 3), np.uint8)
    hint[16:48, 16:48] = 255
    Image.fromarray(hint).save(tmp_path / "smoke_hint.png")
    server.add_input(tmp_path / "smoke_hint.png")
    img = _single_image(server, txt2img_graph(server.ckpt15, "smoke_sd15_cn",
                                              controlnet=(cn, "smoke_hint.png", 1.0)))
    _assert_not_constant(img)
    assert np.abs(img.astype(np.int16) - base_image.astype(np.int16)).mean() > 1.0
    assert "missing controlnet keys" not in server.log_text()


def test_sdxl_txt2img(server):
    ckpt = server.add_model("checkpoints", cached_checkpoint("sdxl", seed=0))
    img = _single_image(server, txt2img_graph(ckpt, "smoke_sdxl"))
    _assert_not_constant(img)
    log = server.log_text()
    # ComfyUI detected the SDXL family: both text encoders (CLIP-L + bigG) and the SDXL UNet class
    assert "SDXLClipModel" in log and "Requested to load SDXL" in log, server.log_tail()

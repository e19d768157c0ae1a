"""What current ComfyUI (2026) asks of a weight adapter, checked inside the real ComfyUI here:
KronA as one of ComfyUI's own adapters (merge patch exact in the fp16 paths, h() for ComfyUI's bypass,
the (loaded_keys, weights) rebuild of its prefetch, load(), create_train/to_train), bypass hooks per
model instance (a deep clone sharing the injection), and KronA trained by ComfyUI's own Train LoRA node.
The parts only newer ComfyUI has (dynamic VRAM, its BypassInjectionManager) are covered by reading its
source: README "ComfyUI versions"."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers.krona_files import random_krona  # noqa: E402
from helpers.subject_images import write_subject_pngs  # noqa: E402
from helpers.tiny_comfy import cached_checkpoint  # noqa: E402
from test_comfy_nodes import graph, image, max_diff  # noqa: E402


pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def server(comfy_server, tmp_path_factory):
    ckpt = cached_checkpoint("sd15")
    comfy_server.add_model("checkpoints", ckpt)
    d = tmp_path_factory.mktemp("current")
    comfy_server.add_model("krona", random_krona(ckpt, d / "current-bypass.krona.safetensors", "sd1", seed=11, scale=0.08))
    for path in write_subject_pngs(d, 2, 64, seed=8, stem="core-train"):
        comfy_server.add_input(path)
    comfy_server.ckpt = ckpt.name
    return comfy_server


def probe(server, node: dict) -> dict:
    history = server.run({**node}, timeout=900)
    key = next(k for k, v in node.items() if v["class_type"].startswith("KronATest"))
    return json.loads(history["outputs"][key]["text"][0])


def test_krona_is_a_comfyui_weight_adapter(server):
    result = probe(server, {"math": {"class_type": "KronATestAdapterMath", "inputs": {"seed": 3}}})
    assert result["class"] == "KronAWeightAdapter" and "KronA" in result["registered_algorithms"]
    assert result["h_linear"] < 1e-5 and result["h_conv"] < 1e-4  # h() = ΔW·x of the materialised kron
    assert result["patch_float32"] < 1e-6
    assert result["patch_float16"] == 0.0  # fp32 math cast once, even with fp16 intermediates
    assert result["rebuilt_equal"] and result["calculate_shape"] is None
    assert result["load_full"] and not result["load_decomposed"] and not result["load_dora"]
    assert result["train_shapes"] == [[64, 8], [5, 96]] and result["train_starts_at_zero"]
    assert result["to_train_equal"] < 1e-5


def test_bypass_hooks_are_per_model_instance(server):
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.ckpt}},
        "krona": {"class_type": "ApplyKronA", "inputs": {"model": ["ckpt", 0], "krona_name": "current-bypass.krona.safetensors",
                                                         "strength_model": 1.0, "bypass": True}},
        "clones": {"class_type": "KronATestDeepCloneBypass", "inputs": {"model": ["krona", 0], "base": ["ckpt", 0]}},
    }
    d = probe(server, g)
    assert d["a_adapted"] > 1e-3 and d["b_adapted"] > 1e-3 and d["a_equals_b"] < 1e-5  # both instances adapted
    assert d["a_after_eject"] == 0.0  # ejecting restores the first instance exactly…
    assert d["b_after_a_ejected"] == 0.0  # …and leaves the second one adapted
    assert d["b_after_eject"] == 0.0


def test_comfyui_train_lora_trains_krona(server):
    """ComfyUI's own Train LoRA node with algorithm "KronA": the paper's factors, LoKr keys any
    loader reads, and a model that differs from the base."""
    g = graph(server.ckpt, prefix="core-krona")
    g.update({
        "i0": {"class_type": "LoadImage", "inputs": {"image": "core-train0.png"}},
        "i1": {"class_type": "LoadImage", "inputs": {"image": "core-train1.png"}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["i0", 0], "image2": ["i1", 0]}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["batch", 0], "vae": ["ckpt", 2]}},
        "train": {"class_type": "TrainLoraNode", "inputs": {
            "model": ["ckpt", 0], "latents": ["encode", 0], "positive": ["pos", 0], "batch_size": 1,
            "grad_accumulation_steps": 1, "steps": 4, "learning_rate": 0.01, "rank": 8, "optimizer": "AdamW",
            "loss_function": "MSE", "seed": 0, "training_dtype": "fp32", "lora_dtype": "fp32", "algorithm": "KronA",
            "gradient_checkpointing": False, "existing_lora": "[None]"}},
        "save_lora": {"class_type": "SaveLoRANode", "inputs": {"lora": ["train", 1], "prefix": "loras/core-krona"}},
        "apply": {"class_type": "LoraModelLoader", "inputs": {"model": ["ckpt", 0], "lora": ["train", 1], "strength_model": 1.0}},
    })
    g["sampler"]["inputs"]["model"] = ["apply", 0]
    trained = server.images(server.run(g, timeout=1800), "save")[0].astype(np.int16)
    base = image(server, graph(server.ckpt, prefix="core-base"))
    assert max_diff(trained, base) > 0
    saved = sorted((server.output_dir / "loras").glob("core-krona*.safetensors"))
    tensors = load_file(saved[-1])
    w1 = {k: v for k, v in tensors.items() if k.endswith(".lokr_w1")}
    w2 = {k: v for k, v in tensors.items() if k.endswith(".lokr_w2")}
    assert w1 and w1.keys() == {k.replace("lokr_w2", "lokr_w1") for k in w2}
    q = next(k for k in w1 if k.endswith("attn1.to_q.lokr_w1"))
    assert q.startswith("diffusion_model.") and tuple(w1[q].shape) == (64, 8)  # (64, 8) on 320-wide attention
    assert any(float(v.abs().sum()) > 0 for v in w2.values())  # trained away from the zero init

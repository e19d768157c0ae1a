"""Train KronA on ComfyUI LATENT + CONDITIONING inputs (any encoder's conditioning) inside a real
ComfyUI (COMFYUI_PATH): on SD1 it trains as the images + prompt inputs do."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers.comfy_server import ComfyPromptError, ComfyExecutionError  # noqa: E402
from test_comfy_nodes import graph, image, max_diff  # noqa: E402
from test_comfy_train import server, train_graph  # noqa: E402,F401  (the module's server fixture)

import krona_core  # noqa: E402

pytestmark = pytest.mark.comfy  # runs without COMFYUI_PATH: skipped (tests/conftest.py)


def latent_train_graph(ckpt: str, steps: int, name: str) -> dict:
    """train_graph with VAE Encode + CLIP Text Encode feeding latents + conditioning (no clip / vae / images)."""
    g = train_graph(ckpt, steps, name=name)
    g["encode"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["batch", 0], "vae": ["ckpt", 2]}}
    g["cond"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a photo of sks toy"}}
    inputs = g["train"]["inputs"]
    for key in ("clip", "vae", "images"):
        del inputs[key]
    inputs.update(latents=["encode", 0], conditioning=["cond", 0])
    for node in ("pos", "neg"):
        g[node]["inputs"]["clip"] = ["ckpt", 1]
    return g


def test_latents_and_conditioning_train_as_images_and_prompt(server):
    server.run(train_graph(server.ckpt, steps=6, name="viaimages"), timeout=1800)
    history = server.run(latent_train_graph(server.ckpt, steps=6, name="vialatents"), timeout=1800)
    folder = server.model_dir("krona") / "trained"
    a = krona_core.load(folder / "viaimages_00001.krona.safetensors")
    b = krona_core.load(folder / "vialatents_00001.krona.safetensors")
    assert a.modules.keys() == b.modules.keys()
    for key in a.modules:  # float16 files: the same factors up to the rounding of two encodes of one image
        for fa, fb in zip(a.modules[key], b.modules[key]):
            assert torch.allclose(fa.float(), fb.float(), atol=2e-3, rtol=1e-2), key
    assert b.training["final_loss"] == pytest.approx(a.training["final_loss"], rel=1e-3)
    assert b.trigger_words == ["a photo of sks toy"]
    trained = server.images(history, "save")[0].astype(np.int16)
    base = image(server, graph(server.ckpt))
    assert max_diff(trained, base) > 4
    applied = image(server, graph(server.ckpt, [("krona", "trained/vialatents_00001.krona.safetensors", 1.0, 1.0)]))
    assert max_diff(applied, trained) <= 3


def test_latents_without_conditioning_are_refused_by_name(server):
    g = latent_train_graph(server.ckpt, steps=2, name="refused")
    del g["train"]["inputs"]["conditioning"]
    with pytest.raises((ComfyExecutionError, ComfyPromptError), match="latents need their conditioning"):
        server.run(g, timeout=600)

"""Train KronA never leaves ComfyUI's shared model changed: cancelled while class images are drawn
(before training starts), the host's own parameter objects, their inference status and
requires_grad flags are back and no hook is left — seen by a test-only probe node in a real ComfyUI.
With steps, resolution and crop left at auto it says which family recipe it applied before it starts
(SD1.5: 500 steps at 512 px, SDXL: 1000 at 1024 px, random crop), and a cancel then restores too."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers.comfy_server import ComfyExecutionError, ComfyServer  # noqa: E402
from helpers.subject_images import write_subject_pngs  # noqa: E402

from helpers.tiny_comfy import cached_checkpoint  # noqa: E402
from test_comfy_train import train_graph  # noqa: E402


ROOT = _TESTS.parent
pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def server(comfy_server, tmp_path_factory):
    # the shared server (tests/conftest.py), which loads the probe pack; the inputs train_graph names
    ckpt = cached_checkpoint("sd15")
    comfy_server.add_model("checkpoints", ckpt)
    comfy_server.add_model("checkpoints", cached_checkpoint("sdxl"))
    folder = tmp_path_factory.mktemp("restore")
    for path in write_subject_pngs(folder, 2, 64, seed=3, stem="train-subject"):
        comfy_server.add_input(path)
    comfy_server.ckpt = ckpt.name
    return comfy_server


def model_state(server: ComfyServer, ckpt: str | None = None) -> dict:
    graph = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt or server.ckpt}},
             "probe": {"class_type": "KronATestModelState", "inputs": {"model": ["ckpt", 0], "tag": str(time.time())}}}
    history = server.run(graph, timeout=600)
    return json.loads(history["outputs"]["probe"]["text"][0])


def test_cancel_during_class_images_restores_the_shared_model(server):
    before = model_state(server)
    assert before["parameters"] > 0 and before["hooks"] == 0
    graph = train_graph(server.ckpt, steps=50, name="restore")
    graph["train"]["inputs"].update(class_prompt="a photo of a toy", num_class_images=400)
    prompt_id = server.queue(graph)
    deadline = time.monotonic() + 600
    while "generating class images (400)" not in server.log_tail(20000):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    time.sleep(1.0)  # well inside the generation (400 images × 20 DDIM steps)
    server.interrupt()
    with pytest.raises(ComfyExecutionError, match="interrupted"):
        server.wait(prompt_id, timeout=600)
    after = model_state(server)
    assert after == before  # same parameter objects, inference status, flags; no hooks


@pytest.mark.parametrize("kind, line", [
    ("sd15", "defaults from the Stable Diffusion 1.x recipe: 500 steps, 512 px, random crop"),
    ("sdxl", "defaults from the Stable Diffusion XL recipe: 1000 steps, 1024 px, random crop"),
])
def test_auto_settings_follow_the_family_recipe_and_say_so(server, kind, line):
    ckpt = cached_checkpoint(kind).name
    before = model_state(server, ckpt)
    graph = train_graph(ckpt, steps=0, name=f"recipe-{kind}")
    graph["train"]["inputs"].update(resolution=0, crop="auto")
    start = len(server.log_text())
    prompt_id = server.queue(graph)
    deadline = time.monotonic() + 600
    while f"Train KronA: {line}" not in server.log_text()[start:]:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    server.interrupt()  # the recipe is what was asked; training it to the end is the trainer tests' job
    with pytest.raises(ComfyExecutionError, match="interrupted"):
        server.wait(prompt_id, timeout=600)
    assert model_state(server, ckpt) == before

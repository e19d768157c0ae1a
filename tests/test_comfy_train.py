"""Train KronA → Save KronA → Apply KronA inside a real ComfyUI (COMFYUI_PATH), and Cancel."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers.comfy_server import ComfyExecutionError  # noqa: E402
from helpers.subject_images import write_subject_pngs  # noqa: E402
from helpers.tiny_comfy import cached_checkpoint  # noqa: E402
from test_comfy_nodes import graph, image, max_diff  # noqa: E402

import krona_core  # noqa: E402

ROOT = _TESTS.parent
pytestmark = pytest.mark.comfy  # runs without COMFYUI_PATH: skipped (tests/conftest.py)


@pytest.fixture(scope="module")
def server(comfy_server, tmp_path_factory):
    srv = comfy_server  # shared with other modules (tests/conftest.py): input names of this module's own
    ckpt = cached_checkpoint("sd15")
    srv.add_model("checkpoints", ckpt)
    folder = tmp_path_factory.mktemp("subject")
    for path in write_subject_pngs(folder, 2, 64, seed=3, stem="train-subject"):
        srv.add_input(path)
    srv.ckpt = ckpt.name
    return srv


def train_graph(ckpt: str, steps: int, checkpoint_every: int = 0, name: str = "subject", preview_every: int = 0) -> dict:
    g = graph(ckpt, prefix="trained")
    g["img0"] = {"class_type": "LoadImage", "inputs": {"image": "train-subject0.png"}}
    g["img1"] = {"class_type": "LoadImage", "inputs": {"image": "train-subject1.png"}}
    g["batch"] = {"class_type": "ImageBatch", "inputs": {"image1": ["img0", 0], "image2": ["img1", 0]}}
    g["train"] = {"class_type": "TrainKronA", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "images": ["batch", 0],
        "instance_prompt": "a photo of sks toy", "steps": steps, "learning_rate": 2e-2, "a1": 64, "a2": 8,
        "targets": "attn", "seed": 0, "grad_accum": 1, "resolution": 64, "checkpoint_every": checkpoint_every,
        "preview_every": preview_every, "name": name}}
    for node in ("pos", "neg"):
        g[node]["inputs"]["clip"] = ["train", 1]
    g["sampler"]["inputs"]["model"] = ["train", 0]
    g["save_krona"] = {"class_type": "SaveKronA", "inputs": {"krona": ["train", 2], "filename_prefix": f"trained/{name}"}}
    g["save_curve"] = {"class_type": "SaveImage", "inputs": {"images": ["train", 3], "filename_prefix": "loss"}}
    return g


def test_train_save_apply_chain_matches_loraloader(server):
    history = server.run(train_graph(server.ckpt, steps=8, checkpoint_every=4, preview_every=8), timeout=1800)
    trained = server.images(history, "save")[0].astype(np.int16)
    curve = server.images(history, "save_curve")[0]
    assert curve.shape[2] == 3 and curve.std() > 5  # a drawn chart, not a blank image
    saved = server.model_dir("krona") / "trained" / "subject_00001.krona.safetensors"
    file = krona_core.load(saved)
    assert file.trigger_words == ["a photo of sks toy"]
    assert file.training["steps"] == 8 and file.training["host"] == "ComfyUI"
    assert {tuple(w1.shape) for w1, _ in file.modules.values()} == {(64, 8)}

    base = image(server, graph(server.ckpt))
    applied = image(server, graph(server.ckpt, [("krona", "trained/subject_00001.krona.safetensors", 1.0, 1.0)]))
    server.add_model("loras", saved, name="subject.krona.safetensors")
    theirs = image(server, graph(server.ckpt, [("lora", "subject.krona.safetensors", 1.0, 1.0)]))
    assert max_diff(applied, theirs) <= 1  # ComfyUI's own LoraLoader on the saved file
    assert max_diff(applied, base) > 4
    assert max_diff(applied, trained) <= 3  # in-graph fp32 factors vs the float16 file


def test_cancel_mid_training_leaves_a_usable_checkpoint(server):
    prompt_id = server.queue(train_graph(server.ckpt, steps=400, checkpoint_every=2, name="cancelled"))
    checkpoints = server.model_dir("krona") / "checkpoints"
    deadline = time.monotonic() + 600
    found = []
    while time.monotonic() < deadline and not found:
        found = sorted(checkpoints.glob("cancelled-*/step_000002.krona.safetensors"))
        time.sleep(0.2)
    assert found, server.log_tail()
    server.interrupt()
    with pytest.raises(ComfyExecutionError, match="interrupted"):
        server.wait(prompt_id, timeout=600)
    run_dir = found[0].parent
    steps = sorted(run_dir.glob("step_*.krona.safetensors"))
    last = steps[-1]
    assert last.with_name(last.name.replace(".krona.safetensors", ".state.safetensors")).is_file()
    file = krona_core.load(last)
    assert 2 <= file.training["steps_done"] < 400
    relative = last.relative_to(server.model_dir("krona")).as_posix()
    base = image(server, graph(server.ckpt))
    applied = image(server, graph(server.ckpt, [("krona", relative, 1.0, 1.0)]))
    assert max_diff(applied, base) > 0
    # and the server still works normally afterwards (no hooks left on the shared model)
    assert max_diff(image(server, graph(server.ckpt)), base) == 0

"""Every example workflow in a real ComfyUI (COMFYUI_PATH): UI and API twins describe the same
graph, and each runs to completion on tiny models that stand in for the ones its notes name."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers.comfy_server import ComfyServer, comfyui_path_from_env  # noqa: E402
from helpers.krona_files import random_krona  # noqa: E402
from helpers.tiny_comfy import cached_checkpoint  # noqa: E402
from helpers.workflow_convert import ui_to_api  # noqa: E402

from krona_core.util.images import to_uint8  # noqa: E402
from krona_core.util.plot import save_png  # noqa: E402
from krona_core.tiny.pipeline import sample_images  # noqa: E402

ROOT = _TESTS.parent
UI = sorted((ROOT / "example_workflows").glob("*.json"))
pytestmark = [pytest.mark.comfy, pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="COMFYUI_PATH not set")]

# what the notes name → the tiny stand-ins
STAND_INS = {
    "checkpoints": {"v1-5-pruned-emaonly.safetensors": "sd15", "sd_xl_base_1.0.safetensors": "sdxl"},
    "controlnet": {"control_v11p_sd15_canny.safetensors": "sd15_controlnet"},
}


def test_workflow_sources_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "workflows.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ComfyServer(comfyui_path_from_env(), custom_nodes={"ComfyUI-KronA": ROOT}) as srv:
        for folder, names in STAND_INS.items():
            for name, kind in names.items():
                srv.add_model(folder, cached_checkpoint(kind), name=name)
        d = tmp_path_factory.mktemp("wf")
        srv.add_model("krona", random_krona(cached_checkpoint("sd15"), d / "my-subject.krona.safetensors", "sd1", seed=1, scale=0.08))
        srv.add_model("krona", random_krona(cached_checkpoint("sdxl"), d / "my-subject-sdxl.krona.safetensors", "sdxl", seed=2, scale=0.05))
        srv.add_model("loras", random_krona(cached_checkpoint("sd15"), d / "my-style.safetensors", "sd1", seed=3, scale=0.05, every=2))
        for i, img in enumerate(sample_images(3, 64, seed=5)):
            name = ["example.png", "subject1.png", "subject2.png"][i]
            save_png(to_uint8((img + 1) / 2), str(d / name))
            srv.add_input(d / name)
        yield srv


def shrink(api: dict) -> dict:
    """Tiny sizes and few steps so that CPU runs take seconds; the graph itself is unchanged."""
    api = copy.deepcopy(api)
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        if node["class_type"] == "KSampler":
            inputs["steps"] = 3
        if node["class_type"] == "TrainKronA":
            inputs.update(steps=4, grad_accum=1, resolution=64, checkpoint_every=2, preview_every=4)
    return api


def test_at_least_one_workflow_chains_krona_with_controlnet():
    types = [{n["type"] for n in json.loads(p.read_text())["nodes"]} for p in UI]
    assert any({"ApplyKronA", "ControlNetApplyAdvanced"} <= t for t in types)
    assert len(UI) == 5 and all(any(n["type"] == "Note" for n in json.loads(p.read_text())["nodes"]) for p in UI)


@pytest.mark.parametrize("path", UI, ids=[p.stem for p in UI])
def test_workflow_twins_agree_and_run(server, path):
    ui = json.loads(path.read_text())
    twin = json.loads((path.parent / "api" / path.name).read_text())
    converted = ui_to_api(ui, server.object_info())
    assert converted == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in twin.items()}
    history = server.run(shrink(twin), timeout=1800)
    saved = [i for i, n in twin.items() if n["class_type"] == "SaveImage"]
    images = [img for node in saved for img in server.images(history, node)]
    assert images, f"{path.name}: no image came out"
    assert all(img.ndim == 3 and img.shape[2] == 3 and img.std() > 1 for img in images)

"""The folder as an Automatic1111/Forge extension inside a real Forge (FORGE_PATH), over its HTTP API:
the extension loads, `<krona:…>` is the built-in Lora network's alias (identical images), models/krona
is scanned, and the KronA tab's training function writes a file that loads back with `<krona:…>`."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

ROOT = _TESTS.parent
pytestmark = pytest.mark.forge  # runs without FORGE_PATH: skipped (tests/conftest.py)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from helpers.krona_files import random_krona
    from helpers.subject_images import write_subject_pngs
    from helpers.tiny_comfy import cached_checkpoint

    d = tmp_path_factory.mktemp("forge")
    images = d / "subject"
    images.mkdir()
    write_subject_pngs(images, 2, 64, seed=3)
    return {
        "ckpt": cached_checkpoint("sd15"),
        "ref": random_krona(cached_checkpoint("sd15"), d / "ref.krona.safetensors", "sd1", seed=1, scale=0.08,
                            trigger_words=("sks toy",)),
        "own": random_krona(cached_checkpoint("sd15"), d / "ownfolder.krona.safetensors", "sd1", seed=2, scale=0.08),
        "images": images,
    }


@pytest.fixture(scope="module")
def forge(files):
    from helpers.forge_server import ForgeServer

    with ForgeServer(extensions={"ComfyUI-KronA": ROOT},
                     models={"Stable-diffusion": [files["ckpt"]], "Lora": [files["ref"]], "krona": [files["own"]]}) as server:
        yield server


def diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_extension_loads_with_its_tab_and_network(forge):
    config = forge.get_json("/config")
    labels = {c.get("props", {}).get("label") for c in config.get("components", [])}
    assert "KronA" in labels  # the tab
    files = forge.get_json("/krona/v1/files")
    networks = {f["network"] for f in files}
    assert {"ref.krona", "ownfolder.krona"} <= networks  # Lora folder and models/krona
    assert next(f for f in files if f["network"] == "ref.krona")["trigger_words"] == ["sks toy"]
    # the KronA page of the extra-networks browser renders a card that inserts <krona:…> and the trigger words
    card = forge.get_json("/sd_extra_networks/get-single-card?page=krona&tabname=txt2img&name=ownfolder.krona")["html"]
    assert "&lt;krona:ownfolder:" in card or "<krona:ownfolder:" in card
    errors = [line for line in forge.log_text().splitlines() if "ComfyUI-KronA" in line and "Error" in line
              and "Git repository" not in line]  # a checkout without a remote is not our error
    assert errors == []


def test_krona_tag_is_the_lora_network(forge):
    base = forge.txt2img("a photo of sks toy")
    lora = forge.txt2img("a photo of sks toy <lora:ref:0.8>")
    krona = forge.txt2img("a photo of sks toy <krona:ref:0.8>")
    assert diff(lora, base) > 4
    assert diff(krona, lora) == 0
    # a file only in models/krona (the built-in Lora scan does not see it) works through the alias
    own = forge.txt2img("a photo of sks toy <krona:ownfolder:1>")
    assert diff(own, base) > 4


def test_training_from_the_tab_backend_writes_a_usable_file(forge, files):
    result = forge.post_json("/krona/v1/train", {
        "images_dir": str(files["images"]), "instance_prompt": "a photo of sks toy", "name": "trained",
        "steps": 4, "learning_rate": 0.02, "resolution": 64, "grad_accum": 1,
    }, timeout=1800)
    assert not result["cancelled"] and result["name"] == "trained_00001.krona"
    assert Path(result["path"]).is_file() and len(result["losses"]) == 4
    base = forge.txt2img("a photo of sks toy")
    trained = forge.txt2img(f"a photo of sks toy {result['tag']}")
    assert result["tag"] == "<krona:trained_00001:1>"
    assert diff(trained, base) > 0


def test_a_failed_training_reports_its_reason_and_a_second_job_is_refused(forge, files, tmp_path):
    import threading
    import time

    from helpers.forge_server import ForgeRequestError

    # a refused request: the status says why, it is not left at "training"
    with pytest.raises(ForgeRequestError) as info:
        forge.post_json("/krona/v1/train", {"images_dir": str(tmp_path / "missing"), "instance_prompt": "x"})
    assert info.value.status == 422 and "not a folder of images" in str(info.value.body)
    assert forge.get_json("/krona/v1/status")["status"].startswith("failed: ")

    # one job at a time: a second request while the first trains is refused with 409
    first: dict = {}
    request = {"images_dir": str(files["images"]), "instance_prompt": "a photo of sks toy", "name": "long",
               "steps": 400, "learning_rate": 0.02, "resolution": 64, "grad_accum": 1}
    runner = threading.Thread(target=lambda: first.update(forge.post_json("/krona/v1/train", request, timeout=1800)))
    runner.start()
    try:
        deadline = time.monotonic() + 900
        while not forge.get_json("/krona/v1/status")["status"].startswith("step "):
            assert runner.is_alive() and time.monotonic() < deadline, first
            time.sleep(0.2)
        with pytest.raises(ForgeRequestError) as busy:
            forge.post_json("/krona/v1/train", {**request, "name": "second"})
        assert busy.value.status == 409 and "already running" in str(busy.value.body)
    finally:
        forge.post_json("/krona/v1/cancel", {})
        runner.join(timeout=900)
    assert first["cancelled"] and len(first["losses"]) < 400


def test_hostile_api_requests_are_refused_without_side_effects(forge, files, tmp_path):
    """Malformed or costly requests are 422 naming the field; convert never reads or writes outside
    the models folders; the file listing survives a symlink loop and flags a broken file."""
    from helpers.forge_server import ForgeRequestError

    good = {"images_dir": str(files["images"]), "instance_prompt": "x"}
    for payload in ([1, 2], {**good, "steps": "500"}, {**good, "steps": 10 ** 9}, {**good, "resolution": 100_000},
                    {**good, "num_class_images": 10 ** 6}, {**good, "bogus": 1}, {"instance_prompt": "x"}):
        with pytest.raises(ForgeRequestError) as info:
            forge.post_json("/krona/v1/train", payload)
        assert info.value.status == 422, (payload, info.value.body)
    krona = forge.model_dir("krona")
    outside = tmp_path / "outside"
    outside.mkdir()
    (krona / "escape").symlink_to(outside)
    (krona / "loop").symlink_to(".")
    (krona / "broken.krona.safetensors").write_bytes(b"\x00" * 16)
    try:
        for payload in ({"src": "ownfolder.krona.safetensors", "dst": str(outside / "x.krona.safetensors")},
                        {"src": "ownfolder.krona.safetensors", "dst": "../../x.krona.safetensors"},
                        {"src": "ownfolder.krona.safetensors", "dst": "escape/x.krona.safetensors"},
                        {"src": "ownfolder.krona.safetensors", "dst": "x.py"},
                        {"src": "/etc/hostname", "dst": "y.krona.safetensors"}, {"src": "a"}):
            with pytest.raises(ForgeRequestError) as info:
                forge.post_json("/krona/v1/convert", payload)
            assert info.value.status == 422, (payload, info.value.body)
        assert not list(outside.iterdir()) and not (krona / "y.krona.safetensors").exists()
        listed = {item["network"]: item for item in forge.get_json("/krona/v1/files")}
        assert "error" in listed["broken.krona"] and listed["ownfolder.krona"]["modules"] > 0
        report = forge.post_json("/krona/v1/convert", {"src": "ownfolder.krona.safetensors", "dst": "own-lora.safetensors",
                                                       "to": "lora"})
        assert "wrote" in report["report"] and (krona / "own-lora.safetensors").is_file()
    finally:
        for name in ("escape", "loop", "broken.krona.safetensors", "own-lora.safetensors"):
            (krona / name).unlink(missing_ok=True)

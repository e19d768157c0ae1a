"""Smoke tests of the headless-Forge test tooling (tests/helpers/forge_server.py).

They need ``FORGE_PATH`` (a prepared Stable Diffusion WebUI Forge checkout, with its own venv at
``FORGE_PYTHON`` or ``<FORGE_PATH>/../forge-venv``) and skip without it. They exercise only the
host, the tiny SD1.5 checkpoint and Forge's built-in Lora network, not the KronA extension, so a
failure here points at the environment or the helper.

The reference full-factor LoKr file is written as ``ref.krona.safetensors`` (its
``ss_output_name`` metadata is "ref", as krona_core writes it) and linked into models/Lora as is:
Forge then knows it by its file name ("ref.krona") and by its alias ("ref"), and both tags must
apply the same weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

from helpers.forge_server import ForgeServer  # noqa: E402
from helpers.krona_files import random_krona  # noqa: E402
from helpers.tiny_comfy import cached_checkpoint  # noqa: E402

pytestmark = pytest.mark.forge  # runs without FORGE_PATH: skipped (tests/conftest.py)

CKPT_NAME = "tiny-sd15-seed0-v1"
PROMPT = "a photo of sks dog"


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    ckpt = cached_checkpoint("sd15")
    ref = tmp_path_factory.mktemp("forge-lokr") / "ref.krona.safetensors"
    random_krona(ckpt, ref, "sd1", seed=1, scale=0.08)
    with ForgeServer(models={"Stable-diffusion": [ckpt], "Lora": [ref]}, ui=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def base_image(forge):
    return forge.txt2img(PROMPT)


def test_model_listed(forge):
    models = forge.get_json("/sdapi/v1/sd-models")
    assert CKPT_NAME in [m["model_name"] for m in models], models
    loras = forge.get_json("/sdapi/v1/loras")
    assert [(x["name"], x["alias"]) for x in loras] == [("ref.krona", "ref")], loras


def test_txt2img_non_constant(forge, base_image):
    assert base_image.dtype == np.uint8
    assert base_image.shape[:2] == (64, 64)
    assert base_image.std() > 1.0, "txt2img gave a constant image"
    again = forge.txt2img(PROMPT)
    assert np.array_equal(again, base_image), "same seed gave a different image"


def test_lokr_applies_and_alias_matches(forge, base_image):
    by_name = forge.txt2img(PROMPT + " <lora:ref:0.8>")
    by_alias = forge.txt2img(PROMPT + " <lora:ref.krona:0.8>")
    diff = np.abs(by_name.astype(np.int16) - base_image.astype(np.int16)).mean()
    assert diff > 1.0, f"<lora:ref:0.8> changed nothing (mean abs diff {diff:.3f})\n{forge.log_tail(3000)}"
    assert np.array_equal(by_name, by_alias), "<lora:ref.krona:0.8> differs from <lora:ref:0.8>"
    # a tag Forge cannot resolve leaves the image alone and logs this error
    assert "activating extra network lora" not in forge.log_text()

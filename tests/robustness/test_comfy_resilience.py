"""Host resilience in the real ComfyUI: 50 prompts in a row alternating good files, corrupt files,
files for another base, hostile metadata and extreme strengths. Every bad prompt is a node error,
every good one an image; the server's resident memory stays bounded across the run
(/proc/<pid>/status VmRSS); the shared model is never left patched (the probe node's view of its
parameters and hooks, and the plain image, are those of the start); the file listing route lists
the good files and flags the bad ones, with a symlink loop in models/krona."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

_TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_TESTS))

from helpers.comfy_graphs import add_txt2img  # noqa: E402
from helpers.comfy_server import ComfyExecutionError, ComfyPromptError, ComfyServer  # noqa: E402
from helpers.krona_files import random_krona  # noqa: E402
from helpers.tiny_comfy import cached_checkpoint  # noqa: E402

from hostile_corpus import hostile_files  # noqa: E402

from krona_core.files.reader import read  # noqa: E402
from krona_core.files.writer import build_metadata, write  # noqa: E402

pytestmark = pytest.mark.comfy
PROMPTS = 50
RSS_BOUND_MB = 300  # growth allowed after the first round (caches warm); a leak of the patched model is ~200 MB a prompt
PREFIX = "resil-"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def wrong_base(good: Path, out: Path) -> Path:
    """The good file's modules with w2 twice as tall: factors of a wider model, labelled SDXL."""
    file = read(good)
    modules = {k: (w1, torch.cat([w2, w2])) for k, (w1, w2) in file.modules.items()}
    return Path(write(out, modules, build_metadata(modules, base_model="sdxl", title=out.name), overwrite=True))


@pytest.fixture(scope="module")
def server(comfy_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("resilience")
    ckpt = cached_checkpoint("sd15")
    comfy_server.add_model("checkpoints", ckpt)
    comfy_server.ckpt = ckpt.name
    krona = comfy_server.model_dir("krona")
    good = random_krona(ckpt, folder / f"{PREFIX}good.krona.safetensors", "sd1", seed=11, scale=0.08, every=2)
    comfy_server.add_model("krona", good, copy=True)
    comfy_server.add_model("krona", wrong_base(good, folder / f"{PREFIX}wrongbase.krona.safetensors"), copy=True)
    for name in ("duplicate-key", "data-truncated", "kron-bomb", "scale-not-baked", "odd-digit-version", "empty"):
        (krona / f"{PREFIX}{name}.krona.safetensors").write_bytes(hostile_files()[f"{name}.krona.safetensors"])
    (krona / f"{PREFIX}half.krona.safetensors").write_bytes(good.read_bytes()[:5000])
    loops = [krona / f"{PREFIX}loop{i}" for i in (1, 2)]
    for link in loops:
        link.symlink_to(".")
    yield comfy_server
    for link in loops:
        link.unlink()


def graph(server: ComfyServer, seed: int, krona: dict | None = None, save: dict | None = None, neg: str = "") -> dict:
    g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.ckpt}}}
    model, clip = ["ckpt", 0], ["ckpt", 1]
    if krona is not None:
        g["apply"] = {"class_type": "ApplyKronA", "inputs": {"model": model, "clip": clip, "strength_model": 1.0,
                                                             "strength_clip": 1.0, "bypass": False, "block_strengths": "",
                                                             **krona}}
        model, clip = ["apply", 0], ["apply", 1]
    if save is not None:
        g["load"] = {"class_type": "LoadKronA", "inputs": {"krona_name": f"{PREFIX}good.krona.safetensors"}}
        g["savek"] = {"class_type": "SaveKronA", "inputs": {"krona": ["load", 0], "filename_prefix": f"{PREFIX}saved",
                                                           "trigger_words": "", "float32": False, **save}}
    return add_txt2img(g, model, clip, ["ckpt", 2], seed=seed, prefix=PREFIX, neg=neg, steps=1, cfg=1.0)


GOOD = "good"
CASES = [  # (kind, ApplyKronA inputs or None, Save KronA inputs or None)
    (GOOD, {"krona_name": f"{PREFIX}good.krona.safetensors"}, None),
    ("bad", {"krona_name": f"{PREFIX}duplicate-key.krona.safetensors"}, None),
    (GOOD, {"krona_name": f"{PREFIX}good.krona.safetensors", "strength_model": 10.0, "strength_clip": -10.0}, None),
    ("bad", {"krona_name": f"{PREFIX}wrongbase.krona.safetensors"}, None),
    (GOOD, {"krona_name": f"{PREFIX}good.krona.safetensors", "bypass": True, "strength_model": -10.0}, None),
    ("bad", {"krona_name": f"{PREFIX}good.krona.safetensors", "strength_model": float("nan")}, None),
    (GOOD, None, None),
    ("bad", {"krona_name": f"{PREFIX}kron-bomb.krona.safetensors"}, None),
    (GOOD, {"krona_name": f"{PREFIX}good.krona.safetensors", "block_strengths": "input:0, output:10"}, None),
    ("bad", {"krona_name": f"{PREFIX}half.krona.safetensors"}, None),
    (GOOD, {"krona_name": f"{PREFIX}good.krona.safetensors", "strength_clip": 0.0}, None),
    ("bad", {"krona_name": f"{PREFIX}good.krona.safetensors", "strength_model": 1e6}, None),
    (GOOD, {"krona_name": f"{PREFIX}good.krona.safetensors"}, None),
    ("bad", {"krona_name": f"{PREFIX}scale-not-baked.krona.safetensors"}, None),
    (GOOD, None, {"metadata": '{"modelspec.author": "me"}'}),
    ("bad", None, {"metadata": '{"krona.scale_baked": "false"}'}),
    (GOOD, {"krona_name": f"{PREFIX}good.krona.safetensors", "strength_model": 0.5}, None),
    ("bad", {"krona_name": f"{PREFIX}odd-digit-version.krona.safetensors"}, None),
    (GOOD, {"krona_name": f"{PREFIX}good.krona.safetensors", "bypass": True}, None),
    ("bad", {"krona_name": f"{PREFIX}good.krona.safetensors", "block_strengths": "input:nan"}, None),
    ("bad", {"krona_name": f"{PREFIX}empty.krona.safetensors"}, None),
    ("bad", {"krona_name": f"{PREFIX}good.krona.safetensors", "strength_clip": float("inf")}, None),
    ("bad", {"krona_name": f"../{PREFIX}good.krona.safetensors"}, None),
    ("bad", {"krona_name": f"{PREFIX}data-truncated.krona.safetensors"}, None),
    ("bad", {"krona_name": f"{PREFIX}loop1/loop2/{PREFIX}good.krona.safetensors"}, None),
]


def model_state(server: ComfyServer) -> dict:
    """The shared model's parameter count, inference flags and forward hooks (the probe node). Its
    parameter objects and requires_grad flags are not compared: ComfyUI's own weight patching
    (LoraLoader's too) swaps parameter objects when it loads and unloads patches."""
    g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": server.ckpt}},
         "probe": {"class_type": "KronATestModelState", "inputs": {"model": ["ckpt", 0], "tag": str(time.time())}}}
    state = json.loads(server.run(g, timeout=600)["outputs"]["probe"]["text"][0])
    return {k: state[k] for k in ("parameters", "inference", "hooks")}


def run_case(server: ComfyServer, index: int, case) -> str:
    kind, krona, save = case
    try:
        history = server.run(graph(server, index, krona, save), timeout=900)
    except (ComfyExecutionError, ComfyPromptError) as exc:
        assert kind == "bad", f"prompt {index} ({krona or save}) failed: {exc}"
        return "node error"
    assert kind == GOOD, f"prompt {index} ({krona or save}) was accepted"
    images = server.images(history, "save")
    assert len(images) == 1 and np.isfinite(images[0]).all()
    return "image"


def plain_image(server: ComfyServer, spaces: int) -> np.ndarray:
    """The base model's image; the negative prompt's spaces (tokenised away) only defeat the cache."""
    return server.images(server.run(graph(server, 10_000, neg=" " * spaces), timeout=900), "save")[0]


def test_fifty_prompts_good_and_hostile_alternating(server):
    before = model_state(server)
    plain = plain_image(server, 0)
    assert np.array_equal(plain_image(server, 1), plain)  # recomputed, same image
    outcomes, rss = [], []
    for index in range(PROMPTS):
        outcomes.append(run_case(server, index, CASES[index % len(CASES)]))
        rss.append(rss_mb(server.proc.pid))
        if CASES[index % len(CASES)][0] == "bad" and index % 5 == 1:
            assert model_state(server) == before, f"after prompt {index}"
    assert model_state(server) == before
    assert np.array_equal(plain_image(server, 2), plain)  # recomputed on the shared model: not left patched
    warm = max(rss[: len(CASES)])
    print(f"\n{PROMPTS} prompts: {outcomes.count('image')} images, {outcomes.count('node error')} node errors; "
          f"server RSS after round 1 {warm:.0f} MB, max after {max(rss):.0f} MB, last {rss[-1]:.0f} MB")
    assert max(rss) - warm < RSS_BOUND_MB, rss


def test_the_listing_route_lists_good_files_and_flags_bad_ones(server):
    listed = {item["file"]: item for item in server.get_json("/krona/info")}
    assert listed[f"{PREFIX}good.krona.safetensors"]["modules"] > 0
    for name in ("duplicate-key", "kron-bomb", "half", "odd-digit-version", "empty"):
        assert "error" in listed[f"{PREFIX}{name}.krona.safetensors"]
    assert not any(f"{PREFIX}loop1/{PREFIX}loop" in name for name in listed)  # each real folder walked once
    one = server.get_json(f"/krona/info?name={PREFIX}good.krona.safetensors")
    assert one["trigger_words"] == ["sks"]

"""The pack inside a real ComfyUI (COMFYUI_PATH), driven through its HTTP API on tiny checkpoints.

The independent path for every image is ComfyUI's own LoraLoader on the same file: it applies
full-factor LoKr as W + strength·kron(w1, w2) with its own code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers.comfy_graphs import add_txt2img  # noqa: E402
from helpers.comfy_server import ComfyExecutionError, ComfyPromptError, ComfyServer  # noqa: E402
from helpers.krona_files import random_krona  # noqa: E402
from helpers.tiny_comfy import cached_checkpoint  # noqa: E402

ROOT = _TESTS.parent
pytestmark = pytest.mark.comfy  # runs without COMFYUI_PATH: skipped (tests/conftest.py)
NODES = ("ApplyKronA", "LoadKronA", "KronAInfo", "SaveKronA")


def graph(ckpt: str, chain=(), *, seed: int = 7, prefix: str = "t", size: int = 64) -> dict:
    """ckpt → chain of adapters → CLIPTextEncode ×2 → KSampler → VAEDecode → SaveImage.

    chain items: ("krona", name, strength_model, strength_clip[, bypass[, blocks]]) or
    ("lora", name, strength_model, strength_clip).
    """
    g = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    model, clip = ["ckpt", 0], ["ckpt", 1]
    for i, item in enumerate(chain):
        kind, name, sm, sc, *rest = item
        node = f"a{i}"
        if kind == "krona":
            inputs = {"model": model, "clip": clip, "krona_name": name, "strength_model": sm, "strength_clip": sc,
                      "bypass": rest[0] if rest else False, "block_strengths": rest[1] if len(rest) > 1 else ""}
            g[node] = {"class_type": "ApplyKronA", "inputs": inputs}
        else:
            g[node] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": name,
                                                             "strength_model": sm, "strength_clip": sc}}
        model, clip = [node, 0], [node, 1]
    return add_txt2img(g, model, clip, ["ckpt", 2], seed=seed, prefix=prefix, size=size)


def image(server: ComfyServer, g: dict) -> np.ndarray:
    images = server.images(server.run(g, timeout=900))
    assert len(images) == 1
    return images[0].astype(np.int16)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max())


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("krona")
    sd15, sdxl = cached_checkpoint("sd15"), cached_checkpoint("sdxl")
    return {
        "sd15": sd15,
        "sdxl": sdxl,
        "a": random_krona(sd15, d / "alpha.krona.safetensors", "sd1", seed=1, scale=0.08),
        "b": random_krona(sd15, d / "beta.krona.safetensors", "sd1", seed=2, scale=0.08, networks=("unet",)),
        "lora_dir_file": random_krona(sd15, d / "inloras.krona.safetensors", "sd1", seed=3, scale=0.08),
        "xl": random_krona(sdxl, d / "xl.krona.safetensors", "sdxl", seed=4, scale=0.05),
    }


@pytest.fixture(scope="module")
def server(comfy_server, files):
    srv = comfy_server  # shared with other modules (tests/conftest.py)
    for key in ("sd15", "sdxl"):
        srv.add_model("checkpoints", files[key])
    for key in ("a", "b", "xl"):
        srv.add_model("krona", files[key])
    # the same files reachable through the loras folder, for ComfyUI's own LoraLoader
    for key in ("a", "b", "xl", "lora_dir_file"):
        srv.add_model("loras", files[key])
    return srv


@pytest.fixture(scope="module")
def sd15_base(server, files):
    return image(server, graph(files["sd15"].name))


def test_pack_loads_and_lists_nodes(server, files):
    assert not server.custom_node_import_failures(), server.log_tail()
    info = server.object_info()
    for node in NODES:
        assert node in info, node
    assert info["ApplyKronA"]["display_name"] == "Apply KronA"
    options = info["ApplyKronA"]["input"]["required"]["krona_name"]
    names = options[1]["options"] if isinstance(options[1], dict) and "options" in options[1] else options[0]
    assert "alpha.krona.safetensors" in names and "inloras.krona.safetensors" in names  # krona + loras folders


def test_apply_equals_loraloader_and_strength_zero_equals_base(server, files, sd15_base):
    name = files["a"].name
    ours = image(server, graph(files["sd15"].name, [("krona", name, 0.8, 0.7)]))
    theirs = image(server, graph(files["sd15"].name, [("lora", name, 0.8, 0.7)]))
    assert max_diff(ours, theirs) <= 1
    assert max_diff(ours, sd15_base) > 8
    zero = image(server, graph(files["sd15"].name, [("krona", name, 0.0, 0.0)]))
    assert max_diff(zero, sd15_base) == 0


def test_bypass_equals_merge(server, files):
    name = files["a"].name
    merged = image(server, graph(files["sd15"].name, [("krona", name, 1.0, 1.0, False)]))
    bypass = image(server, graph(files["sd15"].name, [("krona", name, 1.0, 1.0, True)]))
    assert max_diff(merged, bypass) <= 2


def test_strength_clip_changes_the_conditioning(server, files, sd15_base):
    name = files["a"].name
    clip_only = image(server, graph(files["sd15"].name, [("krona", name, 0.0, 1.0)]))
    assert max_diff(clip_only, sd15_base) > 8
    theirs = image(server, graph(files["sd15"].name, [("lora", name, 0.0, 1.0)]))
    assert max_diff(clip_only, theirs) <= 1


def test_two_krona_files_and_a_lora_stack(server, files):
    chain_ours = [("krona", files["a"].name, 0.6, 0.6), ("krona", files["b"].name, 0.9, 0.0),
                  ("lora", files["lora_dir_file"].name, 0.7, 0.7)]
    chain_ref = [("lora", files["a"].name, 0.6, 0.6), ("lora", files["b"].name, 0.9, 0.0),
                 ("lora", files["lora_dir_file"].name, 0.7, 0.7)]
    ours = image(server, graph(files["sd15"].name, chain_ours))
    theirs = image(server, graph(files["sd15"].name, chain_ref))
    assert max_diff(ours, theirs) <= 1
    only_a = image(server, graph(files["sd15"].name, chain_ours[:1]))
    assert max_diff(ours, only_a) > 4


def test_per_block_strengths(server, files, sd15_base):
    name = files["a"].name
    off = image(server, graph(files["sd15"].name, [("krona", name, 1.0, 0.0, False, "input:0, middle:0, output:0")]))
    assert max_diff(off, sd15_base) == 0
    plain = image(server, graph(files["sd15"].name, [("krona", name, 1.0, 0.0)]))
    ones = image(server, graph(files["sd15"].name, [("krona", name, 1.0, 0.0, False, "default:1")]))
    assert max_diff(plain, ones) == 0
    output_only = image(server, graph(files["sd15"].name, [("krona", name, 1.0, 0.0, True, "input:0, middle:0")]))
    assert max_diff(output_only, sd15_base) > 0 and max_diff(output_only, plain) > 0
    with pytest.raises(ComfyPromptError, match="selector"):
        server.queue(graph(files["sd15"].name, [("krona", name, 1.0, 0.0, False, "inputs?:1")]))


def test_sdxl_both_text_encoders(server, files):
    name = files["xl"].name
    base = image(server, graph(files["sdxl"].name))
    ours = image(server, graph(files["sdxl"].name, [("krona", name, 1.0, 1.0)]))
    theirs = image(server, graph(files["sdxl"].name, [("lora", name, 1.0, 1.0)]))
    assert max_diff(ours, theirs) <= 1 and max_diff(ours, base) > 4
    clip_only = image(server, graph(files["sdxl"].name, [("krona", name, 0.0, 1.0)]))
    assert max_diff(clip_only, base) > 4
    bypass = image(server, graph(files["sdxl"].name, [("krona", name, 1.0, 1.0, True)]))
    assert max_diff(bypass, ours) <= 2


def test_bad_files_give_node_errors_and_the_server_keeps_working(server, files, sd15_base):
    corrupt = server.model_dir("krona") / "corrupt.krona.safetensors"
    corrupt.write_bytes(files["a"].read_bytes()[:4000])
    with pytest.raises(ComfyExecutionError, match="corrupt.krona.safetensors.*truncated"):
        server.run(graph(files["sd15"].name, [("krona", corrupt.name, 1.0, 1.0)]))
    with pytest.raises(ComfyExecutionError, match="xl.krona.safetensors.*(sdxl|SD15)"):
        server.run(graph(files["sd15"].name, [("krona", files["xl"].name, 1.0, 1.0)]))
    with pytest.raises(ComfyPromptError):  # out-of-range strength is refused by validation
        server.queue(graph(files["sd15"].name, [("krona", files["a"].name, 99.0, 1.0)]))
    assert max_diff(image(server, graph(files["sd15"].name)), sd15_base) == 0


def test_load_info_save_round_trip(server, files):
    g = {
        "load": {"class_type": "LoadKronA", "inputs": {"krona_name": files["a"].name}},
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": files["sd15"].name}},
        "info": {"class_type": "KronAInfo", "inputs": {"krona": ["load", 0], "model": ["ckpt", 0]}},
        "save": {"class_type": "SaveKronA", "inputs": {"krona": ["load", 0], "filename_prefix": "people/alice",
                                                       "trigger_words": "alice, ohwx woman",
                                                       "metadata": '{"modelspec.author": "tests"}'}},
    }
    history = server.run(g)
    text = "".join(history["outputs"]["info"]["text"])
    assert "trigger words: sks" in text and "connected model: SD15 (matches)" in text
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in text
    saved = server.model_dir("krona") / "people" / "alice_00001.krona.safetensors"
    assert saved.is_file()
    g["save"]["inputs"]["trigger_words"] = "alice"  # changed input: ComfyUI re-runs the output node
    server.run(g)  # a second save takes the next counter, nothing is overwritten
    assert (server.model_dir("krona") / "people" / "alice_00002.krona.safetensors").is_file()

    import krona_core

    reread = krona_core.load(saved)
    assert reread.trigger_words == ["alice", "ohwx woman"]
    assert reread.metadata["modelspec.author"] == "tests"
    original = krona_core.load(files["a"])
    assert all((reread.modules[k][0] == original.modules[k][0]).all() for k in original.modules)

    # the file name is confined to models/krona
    g["save"]["inputs"]["filename_prefix"] = "../escape"
    with pytest.raises(ComfyExecutionError, match="no '..'"):
        server.run(g)
    # and it is applied like any other file
    xl_info = dict(g)
    xl_info["load"] = {"class_type": "LoadKronA", "inputs": {"krona_name": files["xl"].name}}
    del xl_info["save"]
    text = "".join(server.run(xl_info)["outputs"]["info"]["text"])
    assert "WARNING: the file is for sdxl" in text


def test_merged_checkpoint_equals_apply_krona(server, files, tmp_path):
    from krona_core.convert.merge import merge_into_checkpoint

    merged = tmp_path / "sd15-merged.safetensors"
    merge_into_checkpoint(files["sd15"], krona_core_load(files["a"]), 0.8, merged)
    server.add_model("checkpoints", merged)
    baked = image(server, graph(merged.name))
    applied = image(server, graph(files["sd15"].name, [("krona", files["a"].name, 0.8, 0.8)]))
    assert max_diff(baked, applied) <= 2


def test_lora_to_krona_and_merge_nodes(server, files):
    g = {
        "conv": {"class_type": "LoRAToKronA", "inputs": {"lora_name": files["a"].name, "a1": 64, "a2": 8}},
        "load": {"class_type": "LoadKronA", "inputs": {"krona_name": files["b"].name}},
        "merge": {"class_type": "MergeKronA", "inputs": {"krona_1": ["conv", 0], "weight_1": 1.0,
                                                         "krona_2": ["load", 0], "weight_2": 0.5}},
        "save": {"class_type": "SaveKronA", "inputs": {"krona": ["merge", 0], "filename_prefix": "merged/ab"}},
    }
    history = server.run(g)
    assert "relative error: total 0.000e+00" in "".join(history["outputs"]["conv"]["text"])  # LoKr → KronA is exact
    merged = krona_core_load(server.model_dir("krona") / "merged" / "ab_00001.krona.safetensors")
    assert merged.trigger_words == ["sks"] and len(merged.modules) >= len(krona_core_load(files["b"]).modules)


def krona_core_load(path):
    import krona_core

    return krona_core.load(path)

"""Other trainers' LoKr files in the real ComfyUI here: ComfyUI core's LoraLoader applies each file
(kohya/LyCORIS decomposed, SimpleTuner `lycoris_`, ComfyUI-trainer `diffusion_model.`, DoRA-LoKr on
either axis), and a checkpoint merged by krona_core from the same file gives the same image."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers.krona_files import ATTN, checkpoint_shapes  # noqa: E402
from helpers.tiny_comfy import cached_checkpoint  # noqa: E402
from test_comfy_nodes import graph, image, max_diff  # noqa: E402

from krona_core import families  # noqa: E402
from krona_core.convert.merge import checkpoint_naming, merge_into_checkpoint  # noqa: E402
from krona_core.convert.sources import read_source  # noqa: E402
from krona_core.ops.shapes import choose_shape  # noqa: E402

pytestmark = pytest.mark.comfy
STYLES = ("kohya-decomposed", "simpletuner", "comfy-trainer", "dora-input", "dora-output")


def trainer_file(ckpt: Path, style: str, out: Path, seed: int) -> Path:
    g = torch.Generator().manual_seed(seed)
    slots = families.get("sd1").checkpoint_modules(checkpoint_shapes(ckpt))
    names = [n for n in sorted(slots) if n.startswith("lora_unet_") and ATTN.search(n)]
    tensors = {}
    for name in names:
        slot, shape = slots[name]
        ks = choose_shape(shape, 16, 4)
        w1, w2 = torch.randn(ks.w1_shape, generator=g) * 0.3, torch.randn(ks.w2_shape, generator=g) * 0.05
        key = {"simpletuner": "lycoris_" + name[len("lora_unet_"):],
               "comfy-trainer": slot.key[len("model."):-len(".weight")]}.get(style, name)
        if style == "kohya-decomposed":  # w2 = a @ b at rank 2, scale alpha / 2
            a, b = torch.randn(w2.shape[0], 2, generator=g) * 0.2, torch.randn(2, w2.shape[1], generator=g) * 0.2
            tensors.update({f"{key}.lokr_w1": w1, f"{key}.lokr_w2_a": a, f"{key}.lokr_w2_b": b,
                            f"{key}.alpha": torch.tensor(3.0)})
            continue
        tensors.update({f"{key}.lokr_w1": w1, f"{key}.lokr_w2": w2, f"{key}.alpha": torch.tensor(1.0)})
        if style.startswith("dora"):
            axis = 0 if style == "dora-input" else 1
            scale = torch.rand(*((1, shape[1]) if axis == 0 else (shape[0], 1)), generator=g) + 0.5
            tensors[f"{key}.dora_scale"] = scale
    save_file(tensors, str(out))
    return out


@pytest.fixture(scope="module")
def server(comfy_server, tmp_path_factory):
    ckpt = cached_checkpoint("sd15")
    comfy_server.add_model("checkpoints", ckpt)
    comfy_server.ckpt = ckpt
    comfy_server.dir = tmp_path_factory.mktemp("trainer-lokr")
    return comfy_server


@pytest.mark.parametrize("style", STYLES)
def test_core_loraloader_equals_krona_core_merge(server, style):
    d = server.dir
    path = trainer_file(server.ckpt, style, d / f"trainer-{style}.safetensors", seed=STYLES.index(style))
    server.add_model("loras", path)
    merged = d / f"merged-{style}.safetensors"
    merge_into_checkpoint(server.ckpt, read_source(path, *checkpoint_naming(server.ckpt)), 1.0, merged)
    server.add_model("checkpoints", merged)
    core = image(server, graph(server.ckpt.name, [("lora", path.name, 1.0, 1.0)], prefix=f"core-{style}"))
    baked = image(server, graph(merged.name, prefix=f"baked-{style}"))
    base = image(server, graph(server.ckpt.name, prefix=f"base-{style}"))
    assert max_diff(core, base) > 8  # the file does something…
    assert max_diff(core, baked) <= 2  # …and krona_core reads it as ComfyUI applies it

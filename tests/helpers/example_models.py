"""The files the example workflows' notes name, as tiny seeded stand-ins, for a ComfyUI server.

One definition for the workflow test and the browser test, which run the same workflows on one
shared server (tests/conftest.py, ``example_server``).
"""

from __future__ import annotations

from pathlib import Path

from krona_core.util.images import to_uint8
from krona_core.util.plot import save_png
from krona_core.tiny.pipeline import sample_images

from .krona_files import random_dit_krona, random_krona
from .tiny_comfy import cached_checkpoint
from .tiny_dit import cached_tiny_dit

# what the notes name → the tiny stand-ins
STAND_INS = {
    "checkpoints": {"v1-5-pruned-emaonly.safetensors": "sd15", "sd_xl_base_1.0.safetensors": "sdxl"},
    "controlnet": {"control_v11p_sd15_canny.safetensors": "sd15_controlnet"},
}
#: the trigger words of my-subject.krona.safetensors (shown as chips on Apply KronA)
TRIGGER_WORDS = ("sks dog", "studio photo")


def add_example_models(server, folder: Path) -> None:
    """Checkpoints, ControlNet, KronA/LoRA files and input images the example workflows load;
    the generated files are written to ``folder``."""
    for kind, names in STAND_INS.items():
        for name, stand_in in names.items():
            server.add_model(kind, cached_checkpoint(stand_in), name=name)
    sd15, sdxl = cached_checkpoint("sd15"), cached_checkpoint("sdxl")
    server.add_model("krona", random_krona(sd15, folder / "my-subject.krona.safetensors", "sd1", seed=1, scale=0.08,
                                           trigger_words=TRIGGER_WORDS))
    server.add_model("krona", random_krona(sdxl, folder / "my-subject-sdxl.krona.safetensors", "sdxl", seed=2, scale=0.05))
    server.add_model("loras", random_krona(sd15, folder / "my-style.safetensors", "sd1", seed=3, scale=0.05, every=2))
    flux = cached_tiny_dit(server.comfyui_path, "flux1", "bfloat16")  # ComfyUI's own Flux class, 1 + 1 blocks
    server.add_model("diffusion_models", flux, name="flux1-dev.safetensors")
    server.add_model("krona", random_dit_krona(flux, folder / "my-subject-flux.krona.safetensors", "flux1", seed=4))
    for name, img in zip(["example.png", "subject1.png", "subject2.png"], sample_images(3, 64, seed=5)):
        save_png(to_uint8((img + 1) / 2), str(folder / name))
        server.add_input(folder / name)

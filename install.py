"""A1111 / Forge install hook: install only what the web UI lacks; torch is never touched."""

import launch

# (import name, pip requirement, why): krona_core itself needs only torch/safetensors/numpy,
# which every web UI has; training from the KronA tab uses diffusers + transformers.
NEEDS = [
    ("safetensors", "safetensors>=0.4", "KronA files"),
    ("diffusers", "diffusers>=0.30", "training from the KronA tab"),
    ("transformers", "transformers>=4.40", "training from the KronA tab"),
]

for module, requirement, why in NEEDS:
    if not launch.is_installed(module):
        launch.run_pip(f"install {requirement}", f"{requirement} ({why}) for ComfyUI-KronA")

"""spandrel stand-in for running a real ComfyUI beside torch 2.13 in tests (test tooling only).

spandrel needs torchvision, which has no build beside this torch, so ComfyUI's upscale-model
nodes fail to import — and the frontend then breaks on the missing UpscaleModelLoader it
registers as a default model loader. With this stand-in (on the ComfyUI subprocess's path only
together with the torchvision one) those nodes register; loading an upscale model raises.
"""

from __future__ import annotations

MESSAGE = "spandrel is a stand-in from tests/host_stubs (the real one needs torchvision); upscale models cannot load here"


class ImageModelDescriptor:
    """Type used in isinstance checks by ComfyUI; never instantiated here."""


class ModelLoader:
    def __init__(self, *args, **kwargs):
        raise RuntimeError(MESSAGE)


class _Registry:
    def add(self, *args, **kwargs) -> None:
        raise RuntimeError(MESSAGE)


MAIN_REGISTRY = _Registry()

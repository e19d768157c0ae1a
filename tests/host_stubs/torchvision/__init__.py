"""torchvision stand-in for running a real ComfyUI beside torch 2.13 in tests (see _stub.py).

tests/helpers/comfy_server.py puts tests/host_stubs on the ComfyUI subprocess's PYTHONPATH only
when the real torchvision fails to import. It has no dist-info, so libraries that probe
``importlib.metadata.version("torchvision")`` (transformers, diffusers) still see it as absent.
"""

from ._stub import TorchvisionUnavailable, install_module_getattr

__version__ = "0.0.0+krona.test.stub"
IS_STUB = True

from . import io, models, ops, transforms, utils  # noqa: E402,F401

install_module_getattr(__name__)

"""torchvision.transforms.functional stand-in."""

from .._stub import install_module_getattr

install_module_getattr(__name__)

"""torchvision.ops stand-in: every attribute is a placeholder that raises when called."""

from .._stub import install_module_getattr

install_module_getattr(__name__)

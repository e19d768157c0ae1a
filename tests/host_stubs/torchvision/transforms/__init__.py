"""torchvision.transforms stand-in: every attribute is a placeholder that raises when called."""

from .._stub import install_module_getattr
from . import functional  # noqa: F401


class InterpolationMode:
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


install_module_getattr(__name__)

"""krona_core: Kronecker-product (KronA / DiffuseKronA) adapters for diffusion models.

Host-independent: torch, safetensors and numpy only (diffusers/transformers for the CLI
trainer and demo). The pack's ComfyUI nodes and A1111/Forge scripts are thin wrappers on this.

    handle = krona_core.attach(unet, a1=64, a2=8, targets="attn")   # trainable adapters
    handle.save("me.krona.safetensors", trigger_words=["sks"])
    file = krona_core.load("me.krona.safetensors")                  # validated
    krona_core.apply(unet, file, strength=0.8)
"""

from .apply import apply, apply_all, load
from .format import KronAFile, KronAFileError, read, save, write
from .kron import KronShape, choose_shape, kron_conv2d, kron_linear, materialise, nearest_kronecker, plan_budget
from .layers import KronAAdapter, KronANetwork, attach

__version__ = "0.1.0"

__all__ = [
    "KronAAdapter",
    "KronAFile",
    "KronAFileError",
    "KronANetwork",
    "KronShape",
    "apply",
    "apply_all",
    "attach",
    "choose_shape",
    "kron_conv2d",
    "kron_linear",
    "load",
    "materialise",
    "nearest_kronecker",
    "plan_budget",
    "read",
    "save",
    "write",
    "__version__",
]

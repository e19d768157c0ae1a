"""krona_core: Kronecker-product (KronA / DiffuseKronA) adapters for diffusion models.

Host-independent: torch, safetensors and numpy only (diffusers/transformers for the CLI
trainer and demo). The pack's ComfyUI nodes and A1111/Forge scripts are thin wrappers on this.

    handle = krona_core.attach(unet, a1=64, a2=8, targets="attn")   # trainable adapters
    handle.save("me.krona.safetensors", trigger_words=["sks"])
    file = krona_core.load("me.krona.safetensors")                  # validated
    krona_core.apply(unet, file, strength=0.8)

The names in `__all__` are the stable API; the sub-packages (ops, naming, families, files,
adapters, convert, train, cli) are the layers behind it (README, "Architecture").
"""

from . import families
from .adapters.apply import apply, apply_all, load
from .adapters.attach import attach
from .adapters.layers import KronAAdapter, KronANetwork
from .convert.convert import convert_file, to_krona, to_lora
from .convert.merge import merge_files, merge_into_checkpoint
from .convert.sources import read_source
from .families import Family
from .files.model import KronAFile, KronAFileError, split_trigger_words
from .files.reader import read
from .files.writer import save, write
from .ops.bypass import add_kron_delta, kron_delta
from .ops.matmul import kron_conv2d, kron_linear, materialise
from .ops.nearest import nearest_kronecker
from .ops.shapes import KronShape, choose_shape, plan_budget
from .train.config import TrainConfig, TrainingDiverged, TrainingInterrupted
from .train.job import JobEvents, JobResult, JobSpec, run_job
from .train.loop import train

__version__ = "0.1.0"

__all__ = [
    "Family",
    "JobEvents",
    "JobResult",
    "JobSpec",
    "KronAAdapter",
    "KronAFile",
    "KronAFileError",
    "KronANetwork",
    "KronShape",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "add_kron_delta",
    "apply",
    "apply_all",
    "attach",
    "choose_shape",
    "convert_file",
    "families",
    "kron_conv2d",
    "kron_delta",
    "kron_linear",
    "load",
    "materialise",
    "merge_files",
    "merge_into_checkpoint",
    "nearest_kronecker",
    "plan_budget",
    "read",
    "read_source",
    "run_job",
    "save",
    "split_trigger_words",
    "to_krona",
    "to_lora",
    "train",
    "write",
    "__version__",
]

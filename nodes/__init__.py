"""ComfyUI nodes of ComfyUI-KronA (imported only inside ComfyUI; math lives in krona_core)."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import comfy_adapter, folders, routes  # noqa: F401  (used by the entry point)
from .apply import ApplyKronA
from .convert_nodes import LoRAToKronA, MergeKronA
from .load_info import KronAInfo, LoadKronA
from .save import SaveKronA
from .train_node import TrainKronA

NODES: list[type[io.ComfyNode]] = [ApplyKronA, LoadKronA, KronAInfo, SaveKronA, TrainKronA, LoRAToKronA, MergeKronA]


class KronAExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES

"""What every reader of an adapter-file format implements: claim the keys, group them into
modules, build one module kind per group, name it the kohya way."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Mapping

import torch

from ..families import Family
from .errors import ConvertError
from .kinds import SourceModule

Parts = dict[str, torch.Tensor]
KOHYA_NAME = r"lora_(?:unet|te1|te2|te)_[A-Za-z0-9_]+"


class Reader(ABC):
    format: str
    pattern: re.Pattern
    needs_family = False  # module paths are diffusers / ldm ones: the family names them
    diffusers_components = False  # networks are named as diffusers pipeline components (unet, text_encoder…)

    def claims(self, tensors: Mapping[str, torch.Tensor]) -> bool:
        return all(self.pattern.fullmatch(k) for k in tensors)

    def groups(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], Parts]:
        """{(network, module): {part: tensor}}; `pattern` splits a key into (module, part)."""
        out: dict[tuple[str, str], Parts] = {}
        for key, value in tensors.items():
            m = self.pattern.fullmatch(key)
            out.setdefault(("", m.group(1)), {})[m.group(2)] = value
        return out

    @abstractmethod
    def module(self, name: str, parts: Parts, path: str) -> SourceModule:
        """The module of one group of parts."""

    def module_path(self, module: str, family: Family) -> str:
        """The module path `kohya_name` and the family's fused-weight table read, from the module
        as the file names it (the same for every reader but the underscored-name ones)."""
        return module

    def kohya_name(self, network: str, module: str, family: Family, unet_map=None) -> str:
        """The module's kohya name; `unet_map`: the layout of the model it is for, when that is not
        the family's real one (reduced test models)."""
        if not self.needs_family:
            return module
        if self.diffusers_components:
            network = family.network_of_diffusers(network)
        return family.kohya_name(network, module, unet_map)

    def read(self, tensors: Mapping[str, torch.Tensor], path: str,
             metadata: Mapping[str, str] | None = None) -> dict[tuple[str, str], SourceModule]:
        """Modules keyed by (network, module path as the file names it)."""
        return {key: self.module(key[1], parts, path) for key, parts in self.groups(tensors, path).items()}


def need_parts(parts: Parts, names: tuple[str, ...], module: str, path: str, what: str) -> None:
    if not all(n in parts for n in names):
        raise ConvertError(f"{path}: module {module} lacks {what}")


def scalar(tensor: torch.Tensor, module: str, part: str, path: str) -> float:
    """The value of a one-element tensor (alpha, row_offset), refused when it is not one."""
    if tensor.numel() != 1:
        raise ConvertError(f"{path}: module {module}: {part} must be a single value, got shape {list(tensor.shape)}")
    return float(tensor.reshape(-1)[0])

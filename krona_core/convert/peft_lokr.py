"""PEFT LoKr files: `base_model.model.<path>.lokr_w1[.default]` (a PeftModel's state dict),
`unet.<path>.lokr_w1` or `transformer.<path>.lokr_w1` (diffusers' component prefixes; a
`transformer.` file with LyCORIS `alpha` tensors is OneTrainer's or ai-toolkit's, `readers.py`)
or a bare `<path>.lokr_w1` (`get_peft_model_state_dict`), with the scale alpha / r in the adapter's config — PEFT keeps
alpha and r out of the tensors (`LoKrLayer.update_layer`: scaling = alpha / r, per module through
`rank_pattern` / `alpha_pattern`), so a file without its config is refused, never guessed.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import torch

from ..naming.unet import unet_style
from .errors import ConvertError
from .kinds import SourceModule
from .lokr import FACTORS, lokr_module
from .reader_base import Parts, Reader

CONFIG_NAME = "adapter_config.json"
#: where a config may ride along inside the file (diffusers writes `lora_adapter_metadata`)
_METADATA_KEYS = ("adapter_config", "lora_adapter_metadata")
_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")  # transformer: the DiT families (diffusers' prefix)


def adapter_config(path: str, metadata: Mapping[str, str] | None) -> dict[str, Any]:
    """The PEFT LoKr config of a file: its metadata's, else adapter_config.json beside it."""
    for key in _METADATA_KEYS:
        if metadata and key in metadata:
            try:
                config = json.loads(metadata[key])
            except json.JSONDecodeError as exc:
                raise ConvertError(f"{path}: metadata {key!r} is not JSON ({exc.msg})") from None
            break
    else:
        beside = os.path.join(os.path.dirname(os.path.abspath(path)), CONFIG_NAME)
        if not os.path.isfile(beside):
            raise ConvertError(f"{path}: a PEFT LoKr file keeps its scale (alpha / r) in {CONFIG_NAME}, and there is none "
                               f"beside it; put the adapter's {CONFIG_NAME} next to the file")
        try:
            with open(beside, encoding="utf-8") as fh:
                config = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise ConvertError(f"{beside}: cannot read the PEFT config ({exc})") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LOKR":
        raise ConvertError(f"{path}: the PEFT config is not a LoKr one (peft_type {config.get('peft_type')!r})")
    for field in ("r", "alpha"):
        if not isinstance(config.get(field), (int, float)) or config[field] <= 0:
            raise ConvertError(f"{path}: PEFT config field {field!r} must be a positive number, got {config.get(field)!r}")
    return config


def _pattern_value(patterns: Mapping[str, Any], module: str, default: float) -> float:
    """PEFT's per-module override: the first pattern that matches the end of the module path."""
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
            return float(value)
    return float(default)


def module_scale(config: Mapping[str, Any], module: str) -> float:
    r = _pattern_value(config.get("rank_pattern") or {}, module, config["r"])
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config["alpha"])
    return alpha / r


class PeftLoKrReader(Reader):
    format = "peft-lokr"
    pattern = re.compile(rf"(?:base_model\.model\.)?(?:({'|'.join(_COMPONENTS)})\.)?(.+?)\.({'|'.join(FACTORS)})"
                         r"(?:\.default)?")
    needs_family = True
    diffusers_components = True

    def groups(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], Parts]:
        out: dict[tuple[str, str], Parts] = {}
        for key, value in tensors.items():
            m = self.pattern.fullmatch(key)
            component, module = m.group(1), m.group(2)
            if component is None:
                component = "text_encoder" if module.startswith("text_model.") else "unet"
            if component == "unet" and unet_style(module) is None:
                raise ConvertError(f"{path}: key {key!r}: {module!r} is not a UNet module path (diffusers or ldm)")
            out.setdefault((component, module), {})[m.group(3)] = value
        return out

    def read(self, tensors: Mapping[str, torch.Tensor], path: str,
             metadata: Mapping[str, str] | None = None) -> dict[tuple[str, str], SourceModule]:
        groups = self.groups(tensors, path)  # names checked before the config is looked for
        config = adapter_config(path, metadata)
        return {key: lokr_module(key[1], parts, path, module_scale(config, key[1])) for key, parts in groups.items()}

    def module(self, name: str, parts: Parts, path: str) -> SourceModule:
        raise ConvertError(f"{path}: {name}: a PEFT LoKr module needs its config's scale")  # read() gives it


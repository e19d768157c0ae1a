"""Readers of the adapter files people have, one per source format, each claiming its keys.

A file's format is the reader that claims every one of its keys; a key no reader claims is
refused with its name, never dropped. Readers group keys into modules and build one module kind
each (`kinds.py`); readers whose files use diffusers / ldm paths (`needs_family`) name their
modules the kohya way through the base model's family (`krona_core.families`), no diffusers needed.
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import torch

from ..families import Family
from .errors import ConvertError
from .kinds import Dense, LowRank, Official, SourceModule
from .lokr import PARTS as LOKR_PARTS
from .lokr import lokr_module
from .reader_base import KOHYA_NAME, Parts, Reader, need_parts, scalar
from .peft_lokr import PeftLoKrReader

def lora_module(name: str, down: torch.Tensor, up: torch.Tensor, alpha: torch.Tensor | None, path: str) -> LowRank:
    """ΔW = up · down · alpha / rank as a LowRank module (the scale baked into up)."""
    rank = down.shape[0] if down.dim() else 0
    if (down.dim() not in (2, 4) or up.dim() not in (2, 4) or up.shape[1] != rank or rank == 0
            or math.prod(up.shape[2:]) != 1):
        raise ConvertError(f"{path}: module {name}: lora_down {list(down.shape)} and lora_up {list(up.shape)} are not "
                           "a LoRA pair (down (rank, in[, k, k]), up (out, rank))")
    scale = scalar(alpha, name, "alpha", path) / rank if alpha is not None else 1.0
    kernel = tuple(down.shape[2:]) if down.dim() == 4 else ()
    shape = (up.shape[0], down.shape[1], *kernel)
    return LowRank(name, up.reshape(up.shape[0], rank).float() * scale, down.reshape(rank, -1).float(), shape)


_LOKR_PART = "|".join(LOKR_PARTS)


def lokr_format(tensors: Mapping[str, torch.Tensor]) -> str:
    """krona (full factors only), lokr (decomposed / Tucker / row windows) or dora-lokr."""
    if any(k.endswith(".dora_scale") for k in tensors):
        return "dora-lokr"
    return "lokr" if any(k.endswith(("_a", "_b", "_t2", ".row_offset")) for k in tensors) else "krona"


class LoKrReader(Reader):
    """.krona files and LoKr files in kohya names (kohya, LyCORIS, ai-toolkit, OneTrainer): full,
    decomposed, Tucker, conv, row windows, DoRA — scale by the LyCORIS rule (`lokr.py`)."""

    format = "lokr"
    pattern = re.compile(rf"^({KOHYA_NAME})\.({_LOKR_PART})$")

    def module(self, name: str, parts: Parts, path: str) -> SourceModule:
        return lokr_module(name, parts, path)


class UnderscoredNames:
    """Readers of files naming a module `<prefix><its diffusers path, dots → underscores>`: the
    family dots the path again (`Family.dotted_path`); the name keeps its prefix for detection and
    messages."""

    prefix: str
    needs_family = True

    def groups(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], Parts]:
        return {("unet", module): parts for (_, module), parts in super().groups(tensors, path).items()}

    def module_path(self, module: str, family: Family) -> str:
        return family.dotted_path(module[len(self.prefix):])


def _underscored(prefix: str, parts: str) -> re.Pattern:
    return re.compile(rf"^({prefix}[A-Za-z0-9_-]+)\.({parts})$")


class LycorisLoKrReader(UnderscoredNames, LoKrReader):
    """LyCORIS's own wrapper names, `lycoris_<underscored diffusers path>` (SimpleTuner, which wraps
    the UNet or the transformer with `lycoris.create_lycoris`; ai-toolkit's old LoKr format)."""

    format = "lycoris-lokr"
    prefix = "lycoris_"
    pattern = _underscored(prefix, _LOKR_PART)


class OneTrainerLoKrReader(UnderscoredNames, LoKrReader):
    """OneTrainer's legacy names of the transformer families, `lora_transformer_<underscored diffusers path>`."""

    format = "onetrainer-lokr"
    prefix = "lora_transformer_"
    pattern = _underscored(prefix, _LOKR_PART)


class TransformerLoKrReader(LoKrReader):
    """LoKr in diffusers names behind `transformer.` with LyCORIS `alpha` tensors: OneTrainer's
    diffusers / internal format and ai-toolkit's. Without any `alpha` a file is PEFT's (`peft_lokr.py`)."""

    format = "transformer-lokr"
    pattern = re.compile(rf"^(transformer\..+?)\.({_LOKR_PART})$")
    needs_family = True
    diffusers_components = True

    def claims(self, tensors: Mapping[str, torch.Tensor]) -> bool:
        return super().claims(tensors) and any(k.endswith(".alpha") for k in tensors)

    def groups(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], Parts]:
        """The transformer's modules, named with their prefix (the family's naming strips it)."""
        return {("transformer", module): parts for (_, module), parts in super().groups(tensors, path).items()}


def diffusion_model_groups(groups: dict[tuple[str, str], Parts], path: str) -> dict[tuple[str, str], Parts]:
    """ComfyUI-named groups (`diffusion_model.<ldm path>`) as UNet modules; its text-encoder modules
    (`text_encoders.…`) are refused by name."""
    out = {}
    for (_, module), parts in groups.items():
        if not module.startswith("diffusion_model."):
            raise ConvertError(f"{path}: {module!r}: only diffusion-model modules of ComfyUI files are converted")
        out[("unet", module[len("diffusion_model."):])] = parts
    return out


class ComfyLoKrReader(LoKrReader):
    """LoKr files of ComfyUI's own trainer (and others writing ComfyUI's names):
    `diffusion_model.<ldm path>.lokr_w1` …"""

    format = "comfy-lokr"
    pattern = re.compile(rf"^((?:diffusion_model|text_encoders)\..+?)\.({_LOKR_PART}|diff|diff_b|set_weight)$")
    needs_family = True

    def claims(self, tensors: Mapping[str, torch.Tensor]) -> bool:
        return super().claims(tensors) and any(k.endswith(".lokr_w1") or k.endswith(".lokr_w1_a") for k in tensors)

    def groups(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], Parts]:
        groups = super().groups(tensors, path)
        for (_, module), parts in groups.items():
            other = sorted(set(parts) & {"diff", "diff_b", "set_weight"})
            if other:
                raise ConvertError(f"{path}: key {module}.{other[0]!r}: ComfyUI's trainer stores bias and norm changes as "
                                   "dense differences, which are not Kronecker modules; train without them or use the "
                                   "file in ComfyUI's LoRA loader")
        return diffusion_model_groups(groups, path)


_LORA_PART = r"lora_down\.weight|lora_up\.weight|lora_mid\.weight|alpha"


class KohyaLoRAReader(Reader):
    format = "lora"
    pattern = re.compile(rf"^({KOHYA_NAME})\.({_LORA_PART})$")

    def module(self, name: str, parts: Parts, path: str) -> LowRank:
        need_parts(parts, ("lora_down.weight", "lora_up.weight"), name, path, "lora_down/lora_up weights")
        if "lora_mid.weight" in parts:
            raise ConvertError(f"{path}: {name}: LoCon Tucker (lora_mid) modules are not supported; convert them without --cp")
        return lora_module(name, parts["lora_down.weight"], parts["lora_up.weight"], parts.get("alpha"), path)


class LycorisLoRAReader(UnderscoredNames, KohyaLoRAReader):
    """LoRA / LoCon in LyCORIS's wrapper names (SimpleTuner's LyCORIS `lora` algorithm)."""

    format = "lycoris-lora"
    prefix = "lycoris_"
    pattern = _underscored(prefix, _LORA_PART)


class OneTrainerLoRAReader(UnderscoredNames, KohyaLoRAReader):
    """OneTrainer's legacy LoRA names of the transformer families (`lora_transformer_…`)."""

    format = "onetrainer-lora"
    prefix = "lora_transformer_"
    pattern = _underscored(prefix, _LORA_PART)


class DenseReader(Reader):
    """LyCORIS "full" files (`<module>.diff`), as `convert --to diff` writes them."""

    format = "diff"
    pattern = re.compile(rf"^({KOHYA_NAME})\.(diff)$")

    def module(self, name: str, parts: Parts, path: str) -> Dense:
        return Dense(name, parts["diff"].float())


class ComfyLoRAReader(Reader):
    """LoRA files ComfyUI's trainer writes: `diffusion_model.<ldm path>.lora_down.weight` …"""

    format = "comfy-lora"
    pattern = re.compile(r"^((?:diffusion_model|text_encoders)\..+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")
    needs_family = True

    def groups(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], Parts]:
        return diffusion_model_groups(super().groups(tensors, path), path)

    def module(self, name: str, parts: Parts, path: str) -> LowRank:
        need_parts(parts, ("lora_down.weight", "lora_up.weight"), name, path, "lora_down/lora_up weights")
        return lora_module(name, parts["lora_down.weight"], parts["lora_up.weight"], parts.get("alpha"), path)



_PROCESSOR = re.compile(r"^(?:unet\.)?(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def _processor_groups(tensors: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], Parts]:
    """Attention-processor keys (`….attn1.processor.to_q_lora.down.weight`) by UNet module path."""
    out: dict[tuple[str, str], Parts] = {}
    for key, value in tensors.items():
        m = _PROCESSOR.fullmatch(key)
        target = m.group(2) + (".0" if m.group(2) == "to_out" else "")
        out.setdefault(("unet", f"{m.group(1)}.{target}"), {})[m.group(3)] = value
    return out


def _processor_is_lora(tensors: Mapping[str, torch.Tensor]) -> bool:
    """LoRA down (r, in) / up (out, r) share r; DiffuseKronA down (a2, a1) / up (b1, b2) do not."""
    pairs = _processor_groups(tensors).values()
    return all(p["up"].shape[1] == p["down"].shape[0] for p in pairs if "up" in p and "down" in p)


class OfficialReader(Reader):
    """The official DiffuseKronA checkpoints (IBM): `unet.<path>.processor.to_q_lora.{down,up}.weight`."""

    format = "official"
    pattern = _PROCESSOR
    needs_family = True

    def claims(self, tensors: Mapping[str, torch.Tensor]) -> bool:
        # the old diffusers attention-processor LoRA uses the same names: PEFT's reader takes those
        return super().claims(tensors) and not _processor_is_lora(tensors)

    def groups(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], Parts]:
        return _processor_groups(tensors)

    def module(self, name: str, parts: Parts, path: str) -> Official:
        need_parts(parts, ("down", "up"), name, path, "its down or up weight")
        if parts["down"].dim() != 2 or parts["up"].dim() != 2:
            raise ConvertError(f"{path}: module {name}: official down {list(parts['down'].shape)} / up "
                               f"{list(parts['up'].shape)} must be 2-D")
        return Official(name, parts["down"].float(), parts["up"].float())



class PeftLoRAReader(Reader):
    """diffusers / PEFT LoRAs (`unet.….to_q.lora_A.weight`, `text_encoder.…`) and the old
    attention-processor form (`….processor.to_q_lora.down.weight`)."""

    format = "peft"
    pattern = re.compile(r"^(?:(unet|text_encoder|text_encoder_2)\.)?(.+?)\.(lora_A|lora_B)(?:\.default)?\.weight$"
                         r"|^(?:(unet|text_encoder|text_encoder_2)\.)?(.+?)\.alpha$")
    needs_family = True
    diffusers_components = True

    def claims(self, tensors: Mapping[str, torch.Tensor]) -> bool:
        return all(self.pattern.fullmatch(k) or _PROCESSOR.fullmatch(k) for k in tensors)

    def groups(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], Parts]:
        out = _processor_groups({k: v for k, v in tensors.items() if _PROCESSOR.fullmatch(k)})
        for key, value in tensors.items():
            m = None if _PROCESSOR.fullmatch(key) else self.pattern.fullmatch(key)
            if m is not None:
                owner, module = m.group(1) or m.group(4) or "unet", m.group(2) or m.group(5)
                out.setdefault((owner, module), {})[{"lora_A": "down", "lora_B": "up"}.get(m.group(3), "alpha")] = value
        return out

    def module(self, name: str, parts: Parts, path: str) -> LowRank:
        need_parts(parts, ("down", "up"), name, path, "its lora_A/lora_B (down/up) weights")
        return lora_module(name, parts["down"], parts["up"], parts.get("alpha"), path)



#: in claiming order: the official reader must see processor keys before PEFT's
READERS: tuple[Reader, ...] = (OfficialReader(), LoKrReader(), LycorisLoKrReader(), OneTrainerLoKrReader(), ComfyLoKrReader(),
                               TransformerLoKrReader(), KohyaLoRAReader(), LycorisLoRAReader(), OneTrainerLoRAReader(),
                               ComfyLoRAReader(), PeftLoRAReader(), PeftLoKrReader(), DenseReader())


def reader_for(tensors: Mapping[str, torch.Tensor], path: str) -> Reader:
    if not tensors:
        raise ConvertError(f"{path}: the file holds no tensors")
    for reader in READERS:
        if reader.claims(tensors):
            return reader
    unknown = next((k for k in tensors if not any(r.pattern.fullmatch(k) or _PROCESSOR.fullmatch(k) for r in READERS)), None)
    if unknown is None:
        raise ConvertError(f"{path}: mixes keys of several adapter formats (e.g. {next(iter(tensors))!r}); "
                           "convert each part separately")
    raise ConvertError(f"{path}: unknown key {unknown!r}: not KronA, LoKr (kohya/LyCORIS, SimpleTuner, OneTrainer, "
                       "ai-toolkit, ComfyUI, PEFT names), LyCORIS full, kohya/SimpleTuner/OneTrainer/ComfyUI/PEFT LoRA "
                       "or official DiffuseKronA")

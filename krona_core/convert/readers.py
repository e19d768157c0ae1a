"""Readers of the adapter files people have, one per source format, each claiming its keys.

A file's format is the reader that claims every one of its keys; a key no reader claims is
refused with its name, never dropped. Readers group keys into modules and build one module kind
each (`kinds.py`); readers whose files use diffusers / ldm paths (`needs_family`) name their
modules the kohya way through the base model's family (`krona_core.families`), no diffusers needed.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Mapping

import torch

from ..families import Family
from .errors import ConvertError
from .kinds import Dense, Kronecker, LowRank, Official, SourceModule

Parts = dict[str, torch.Tensor]
_KOHYA_NAME = r"lora_(?:unet|te1|te2|te)_[A-Za-z0-9_]+"


class Reader(ABC):
    format: str
    pattern: re.Pattern
    needs_family = False  # module paths are diffusers / ldm ones: the family names them

    def claims(self, tensors: Mapping[str, torch.Tensor]) -> bool:
        return all(self.pattern.match(k) for k in tensors)

    def groups(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], Parts]:
        """{(network, module): {part: tensor}}; `pattern` splits a key into (module, part)."""
        out: dict[tuple[str, str], Parts] = {}
        for key, value in tensors.items():
            m = self.pattern.match(key)
            out.setdefault(("", m.group(1)), {})[m.group(2)] = value
        return out

    @abstractmethod
    def module(self, name: str, parts: Parts, path: str) -> SourceModule:
        """The module of one group of parts."""

    def kohya_name(self, network: str, module: str, family: Family) -> str:
        return module

    def read(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], SourceModule]:
        """Modules keyed by (network, module path as the file names it)."""
        return {key: self.module(key[1], parts, path) for key, parts in self.groups(tensors, path).items()}


def _need(parts: Parts, names: tuple[str, ...], module: str, path: str, what: str) -> None:
    if not all(n in parts for n in names):
        raise ConvertError(f"{path}: module {module} lacks {what}")


def lora_module(name: str, down: torch.Tensor, up: torch.Tensor, alpha: torch.Tensor | None) -> LowRank:
    """ΔW = up · down · alpha / rank as a LowRank module (the scale baked into up)."""
    rank = down.shape[0]
    scale = float(alpha) / rank if alpha is not None else 1.0
    kernel = tuple(down.shape[2:]) if down.dim() == 4 else ()
    shape = (up.shape[0], down.shape[1], *kernel)
    return LowRank(name, up.reshape(up.shape[0], rank).float() * scale, down.reshape(rank, -1).float(), shape)


class LoKrReader(Reader):
    """.krona files and every LyCORIS LoKr variant: full, decomposed (w1_a/w1_b, w2_a/w2_b), Tucker
    (t2), conv — each an exact Kronecker product. Scale: alpha / dim for a decomposed half (dim =
    that half's rank; when both are decomposed the w2 rank, as ComfyUI, A1111 and LyCORIS compute
    it); 1 when both halves are full."""

    format = "lokr"
    pattern = re.compile(rf"^({_KOHYA_NAME})\.(lokr_w1|lokr_w2|lokr_w1_a|lokr_w1_b|lokr_w2_a|lokr_w2_b|lokr_t2|alpha)$")

    def format_of(self, tensors: Mapping[str, torch.Tensor]) -> str:
        return "lokr" if any(k.endswith(("_a", "_b", "_t2")) for k in tensors) else "krona"

    def module(self, name: str, parts: Parts, path: str) -> Kronecker:
        parts = {k: v.float() for k, v in parts.items()}
        dim = None
        if "lokr_w1" in parts:
            w1 = parts["lokr_w1"]
        else:
            _need(parts, ("lokr_w1_a", "lokr_w1_b"), name, path, "its lokr_w1 (or lokr_w1_a + lokr_w1_b)")
            w1, dim = parts["lokr_w1_a"] @ parts["lokr_w1_b"], parts["lokr_w1_b"].shape[0]
        if "lokr_w2" in parts:
            w2 = parts["lokr_w2"]
        else:
            _need(parts, ("lokr_w2_a", "lokr_w2_b"), name, path, "its lokr_w2 (or lokr_w2_a + lokr_w2_b)")
            a, b = parts["lokr_w2_a"], parts["lokr_w2_b"]
            dim = b.shape[0]
            if "lokr_t2" in parts:  # Tucker: w2[p, r, k, l] = Σ t2[i, j, k, l] · b[j, r] · a[i, p]
                w2 = torch.einsum("ijkl,jr,ip->prkl", parts["lokr_t2"], b, a)
            else:
                w2 = (a @ b.reshape(b.shape[0], -1)).reshape(a.shape[0], *b.shape[1:])
        scale = float(parts["alpha"]) / dim if dim is not None and "alpha" in parts else 1.0
        return Kronecker(name, w1 * scale, w2)


class KohyaLoRAReader(Reader):
    format = "lora"
    pattern = re.compile(rf"^({_KOHYA_NAME})\.(lora_down\.weight|lora_up\.weight|lora_mid\.weight|alpha)$")

    def module(self, name: str, parts: Parts, path: str) -> LowRank:
        _need(parts, ("lora_down.weight", "lora_up.weight"), name, path, "lora_down/lora_up weights")
        if "lora_mid.weight" in parts:
            raise ConvertError(f"{path}: {name}: LoCon Tucker (lora_mid) modules are not supported; convert them without --cp")
        return lora_module(name, parts["lora_down.weight"], parts["lora_up.weight"], parts.get("alpha"))


class DenseReader(Reader):
    """LyCORIS "full" files (`<module>.diff`), as `convert --to diff` writes them."""

    format = "diff"
    pattern = re.compile(rf"^({_KOHYA_NAME})\.(diff)$")

    def module(self, name: str, parts: Parts, path: str) -> Dense:
        return Dense(name, parts["diff"].float())


class ComfyLoRAReader(Reader):
    """LoRA files ComfyUI's trainer writes: `diffusion_model.<ldm path>.lora_down.weight` …"""

    format = "comfy-lora"
    pattern = re.compile(r"^((?:diffusion_model|text_encoders)\..+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")
    needs_family = True

    def groups(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], Parts]:
        out = {}
        for (_, module), parts in super().groups(tensors, path).items():
            if not module.startswith("diffusion_model."):
                raise ConvertError(f"{path}: {module!r}: only diffusion-model modules of ComfyUI LoRAs are converted")
            out[("unet", module[len("diffusion_model."):])] = parts
        return out

    def module(self, name: str, parts: Parts, path: str) -> LowRank:
        _need(parts, ("lora_down.weight", "lora_up.weight"), name, path, "lora_down/lora_up weights")
        return lora_module(name, parts["lora_down.weight"], parts["lora_up.weight"], parts.get("alpha"))

    def kohya_name(self, network: str, module: str, family: Family) -> str:
        return family.kohya_name(network, module)


_PROCESSOR = re.compile(r"^(?:unet\.)?(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def _processor_groups(tensors: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], Parts]:
    """Attention-processor keys (`….attn1.processor.to_q_lora.down.weight`) by UNet module path."""
    out: dict[tuple[str, str], Parts] = {}
    for key, value in tensors.items():
        m = _PROCESSOR.match(key)
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
        _need(parts, ("down", "up"), name, path, "its down or up weight")
        return Official(name, parts["down"].float(), parts["up"].float())

    def kohya_name(self, network: str, module: str, family: Family) -> str:
        return family.kohya_name(network, module)


class PeftLoRAReader(Reader):
    """diffusers / PEFT LoRAs (`unet.….to_q.lora_A.weight`, `text_encoder.…`) and the old
    attention-processor form (`….processor.to_q_lora.down.weight`)."""

    format = "peft"
    pattern = re.compile(r"^(?:(unet|text_encoder|text_encoder_2)\.)?(.+?)\.(lora_A|lora_B)(?:\.default)?\.weight$"
                         r"|^(?:(unet|text_encoder|text_encoder_2)\.)?(.+?)\.alpha$")
    needs_family = True

    def claims(self, tensors: Mapping[str, torch.Tensor]) -> bool:
        return all(self.pattern.match(k) or _PROCESSOR.match(k) for k in tensors)

    def groups(self, tensors: Mapping[str, torch.Tensor], path: str) -> dict[tuple[str, str], Parts]:
        out = _processor_groups({k: v for k, v in tensors.items() if _PROCESSOR.match(k)})
        for key, value in tensors.items():
            m = None if _PROCESSOR.match(key) else self.pattern.match(key)
            if m is not None:
                owner, module = m.group(1) or m.group(4) or "unet", m.group(2) or m.group(5)
                out.setdefault((owner, module), {})[{"lora_A": "down", "lora_B": "up"}.get(m.group(3), "alpha")] = value
        return out

    def module(self, name: str, parts: Parts, path: str) -> LowRank:
        _need(parts, ("down", "up"), name, path, "its lora_A/lora_B (down/up) weights")
        return lora_module(name, parts["down"], parts["up"], parts.get("alpha"))

    def kohya_name(self, network: str, module: str, family: Family) -> str:
        return family.kohya_name(family.network_of_diffusers(network), module)


#: in claiming order: the official reader must see processor keys before PEFT's
READERS: tuple[Reader, ...] = (OfficialReader(), LoKrReader(), KohyaLoRAReader(), ComfyLoRAReader(), PeftLoRAReader(),
                               DenseReader())


def reader_for(tensors: Mapping[str, torch.Tensor], path: str) -> Reader:
    if not tensors:
        raise ConvertError(f"{path}: the file holds no tensors")
    for reader in READERS:
        if reader.claims(tensors):
            return reader
    unknown = next((k for k in tensors if not any(r.pattern.match(k) or _PROCESSOR.match(k) for r in READERS)), None)
    if unknown is None:
        raise ConvertError(f"{path}: mixes keys of several adapter formats (e.g. {next(iter(tensors))!r}); "
                           "convert each part separately")
    raise ConvertError(f"{path}: unknown key {unknown!r}: not KronA, LyCORIS LoKr (or full), kohya/ComfyUI/PEFT LoRA "
                       "or official DiffuseKronA")

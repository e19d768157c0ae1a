"""SD-family UNet naming: diffusers paths ↔ ldm / SGM paths.

    diffusers   down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
    ldm / SGM   input_blocks.1.1.transformer_blocks.0.attn1.to_q
                (behind `model.diffusion_model.` in a single-file checkpoint, `diffusion_model.` in ComfyUI)

The map is derived from the block layout (levels, resnets per level, which levels have attention),
read off the names themselves or given by a model family's config, so it works for any UNet of the
SD family, including the reduced ones used in tests, rather than from a hard-coded table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from .kohya import KeyMapError, detect_naming, kohya_key

_RESNET_DIFFUSERS_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_RESNET_LDM_TO_DIFFUSERS = {v: k for k, v in _RESNET_DIFFUSERS_TO_LDM.items()}

_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


@dataclass(frozen=True)
class UNetLayout:
    """Block structure of an SD-family UNet, enough to place every block in both namings.

    Per down level i: resnets[i] resnets, attention or not, a downsampler or not. Up level i of
    diffusers (reversed order) has up_resnets[i] resnets (= resnets of the mirrored level + 1).
    """

    resnets: tuple[int, ...]
    down_attention: tuple[bool, ...]
    downsample: tuple[bool, ...]
    up_resnets: tuple[int, ...]
    up_attention: tuple[bool, ...]
    upsample: tuple[bool, ...]
    mid_resnets: int
    mid_attention: bool

    @classmethod
    def from_diffusers(cls, paths: Iterable[str]) -> "UNetLayout":
        down: dict[int, dict] = {}
        up: dict[int, dict] = {}
        mid_res: set[int] = set()
        mid_attn = False
        for path in paths:
            m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)", path)
            if m:
                side = down if m.group(1) == "down" else up
                level = side.setdefault(int(m.group(2)), {"resnets": set(), "attn": False, "sample": False})
                kind = m.group(3)
                if kind == "resnets":
                    level["resnets"].add(int(m.group(4)))
                elif kind == "attentions":
                    level["attn"] = True
                else:
                    level["sample"] = True
                continue
            m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)", path)
            if m:
                if m.group(1) == "resnets":
                    mid_res.add(int(m.group(2)))
                else:
                    mid_attn = True
        if not down:
            raise KeyMapError("no diffusers down_blocks.* names: not a diffusers UNet")
        n = max(down) + 1
        if sorted(down) != list(range(n)) or (up and sorted(up) != list(range(n))):
            raise KeyMapError("diffusers UNet names have gaps in their block indices")
        return cls(
            resnets=tuple(len(down[i]["resnets"]) for i in range(n)),
            down_attention=tuple(down[i]["attn"] for i in range(n)),
            downsample=tuple(down[i]["sample"] for i in range(n)),
            up_resnets=tuple(len(up[i]["resnets"]) for i in range(n)) if up else tuple(r + 1 for r in reversed([len(down[i]["resnets"]) for i in range(n)])),
            up_attention=tuple(up[i]["attn"] for i in range(n)) if up else tuple(False for _ in range(n)),
            upsample=tuple(up[i]["sample"] for i in range(n)) if up else tuple(False for _ in range(n)),
            mid_resnets=len(mid_res),
            mid_attention=mid_attn,
        )

    @classmethod
    def from_blocks(cls, down_block_types: Sequence[str], up_block_types: Sequence[str], layers_per_block: int,
                    mid_attention: bool = True) -> "UNetLayout":
        """The layout of a diffusers `UNet2DConditionModel` config, without building the model:
        every level but the last downsamples, every up level but the last upsamples."""
        n = len(down_block_types)
        return cls(
            resnets=(layers_per_block,) * n,
            down_attention=tuple("CrossAttn" in t for t in down_block_types),
            downsample=tuple(i < n - 1 for i in range(n)),
            up_resnets=(layers_per_block + 1,) * n,
            up_attention=tuple("CrossAttn" in t for t in up_block_types),
            upsample=tuple(i < n - 1 for i in range(n)),
            mid_resnets=2,
            mid_attention=mid_attention,
        )

    @classmethod
    def from_ldm(cls, paths: Iterable[str]) -> "UNetLayout":
        inputs: dict[int, set[str]] = {}
        outputs: dict[int, dict[int, set[str]]] = {}
        middle: dict[int, set[str]] = {}
        for path in paths:
            m = re.match(r"input_blocks\.(\d+)\.(\d+)\.?([^.]*)", path)
            if m:
                inputs.setdefault(int(m.group(1)), set()).add(f"{m.group(2)}.{m.group(3)}")
                continue
            m = re.match(r"output_blocks\.(\d+)\.(\d+)\.?([^.]*)", path)
            if m:
                outputs.setdefault(int(m.group(1)), {}).setdefault(int(m.group(2)), set()).add(m.group(3))
                continue
            m = re.match(r"middle_block\.(\d+)\.?([^.]*)", path)
            if m:
                middle.setdefault(int(m.group(1)), set()).add(m.group(2))
        if not inputs:
            raise KeyMapError("no ldm input_blocks.* names: not an ldm UNet")
        # walk input blocks 1.. : resnet blocks until a downsampler ("0.op") closes a level
        resnets: list[int] = []
        attention: list[bool] = []
        downsample: list[bool] = []
        count, attn = 0, False
        for index in sorted(i for i in inputs if i > 0):
            parts = inputs[index]
            if "0.op" in parts:
                resnets.append(count)
                attention.append(attn)
                downsample.append(True)
                count, attn = 0, False
            else:
                count += 1
                attn = attn or any(p.startswith("1.") for p in parts)
        if count:
            resnets.append(count)
            attention.append(attn)
            downsample.append(False)
        levels = len(resnets)
        up_resnets = tuple(r + 1 for r in reversed(resnets))
        up_attention, upsample = [], []
        start = 0
        for i in range(levels):
            blocks = [outputs.get(start + j, {}) for j in range(up_resnets[i])]
            up_attention.append(any(1 in b and any(s in b[1] for s in ("transformer_blocks", "proj_in", "norm")) for b in blocks))
            last = blocks[-1] if blocks else {}
            upsample.append(any("conv" in parts for sub, parts in last.items() if sub > 0))
            start += up_resnets[i]
        mid_resnets = sum(1 for parts in middle.values() if "in_layers" in parts)
        mid_attention = any(("transformer_blocks" in parts or "proj_in" in parts) for parts in middle.values())
        return cls(tuple(resnets), tuple(attention), tuple(downsample), up_resnets, tuple(up_attention), tuple(upsample), mid_resnets, mid_attention)

    def block_pairs(self) -> list[tuple[str, str, str]]:
        """(diffusers prefix, ldm prefix, kind) for every block; kind is resnet, attention or plain."""
        pairs: list[tuple[str, str, str]] = []
        index = 1
        for i, count in enumerate(self.resnets):
            for j in range(count):
                pairs.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{index}.0", "resnet"))
                if self.down_attention[i]:
                    pairs.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{index}.1", "attention"))
                index += 1
            if self.downsample[i]:
                pairs.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{index}.0.op", "plain"))
                index += 1
        mid_index = 0
        for j in range(self.mid_resnets):
            pairs.append((f"mid_block.resnets.{j}", f"middle_block.{mid_index}", "resnet"))
            mid_index += 1
            if j == 0 and self.mid_attention:
                pairs.append(("mid_block.attentions.0", f"middle_block.{mid_index}", "attention"))
                mid_index += 1
        index = 0
        for i, count in enumerate(self.up_resnets):
            for j in range(count):
                pairs.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{index}.0", "resnet"))
                if self.up_attention[i]:
                    pairs.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{index}.1", "attention"))
                index += 1
            if self.upsample[i]:
                sub = 2 if self.up_attention[i] else 1
                pairs.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{index - 1}.{sub}.conv", "plain"))
        for diffusers_name, ldm_name in _TOP_LEVEL.items():
            pairs.append((diffusers_name, ldm_name, "plain"))
        return pairs


class UNetKeyMap:
    """Bidirectional diffusers ↔ ldm path map for one UNet layout (module paths or parameter keys)."""

    def __init__(self, layout: UNetLayout):
        self.layout = layout
        self._to_ldm: dict[str, tuple[str, str]] = {}
        self._to_diffusers: dict[str, tuple[str, str]] = {}
        for diffusers_prefix, ldm_prefix, kind in layout.block_pairs():
            self._to_ldm[diffusers_prefix] = (ldm_prefix, kind)
            self._to_diffusers[ldm_prefix] = (diffusers_prefix, kind)

    @classmethod
    def from_names(cls, paths: Iterable[str]) -> "UNetKeyMap":
        """Build from the module paths or state-dict keys of a UNet in either naming."""
        names = [strip_unet_prefix(p) for p in paths]
        style = detect_naming(names)
        if style == "diffusers":
            return cls(UNetLayout.from_diffusers(names))
        if style == "ldm":
            return cls(UNetLayout.from_ldm(names))
        raise KeyMapError(f"expected UNet names (diffusers or ldm), got {style} names")

    @staticmethod
    def _translate(path: str, table: Mapping[str, tuple[str, str]], inner: Mapping[str, str], family: str) -> str:
        parts = path.split(".")
        for cut in range(min(len(parts), 6), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in table:
                target, kind = table[prefix]
                rest = parts[cut:]
                if kind == "resnet" and rest:
                    # resnet children are renamed (norm1 ↔ in_layers.0 …); their names span 1–2 parts
                    for width in (2, 1):
                        head = ".".join(rest[:width])
                        if len(rest) >= width and head in inner:
                            rest = inner[head].split(".") + rest[width:]
                            break
                    else:
                        raise KeyMapError(f"{path!r}: unknown resnet member {'.'.join(rest)!r}")
                return ".".join([target, *rest])
        raise KeyMapError(f"{path!r} is not a {family} UNet name of this layout")

    def to_ldm(self, diffusers_path: str) -> str:
        return self._translate(diffusers_path, self._to_ldm, _RESNET_DIFFUSERS_TO_LDM, "diffusers")

    def to_diffusers(self, ldm_path: str) -> str:
        return self._translate(strip_unet_prefix(ldm_path), self._to_diffusers, _RESNET_LDM_TO_DIFFUSERS, "ldm")

    def kohya_aliases(self, module_path: str) -> set[str]:
        """Both kohya names (diffusers- and ldm-style) of a UNet module: readers accept either."""
        path = strip_unet_prefix(module_path)
        names = {kohya_key("unet", path)}
        style = unet_style(path)
        if style == "diffusers":
            names.add(kohya_key("unet", self.to_ldm(path)))
        elif style == "ldm":
            names.add(kohya_key("unet", self.to_diffusers(path)))
        return names


_DIFFUSERS_ROOTS = {"down_blocks", "up_blocks", "mid_block", "time_embedding", "add_embedding", "conv_in", "conv_norm_out", "conv_out"}
_LDM_ROOTS = {"input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out"}


def unet_style(path: str) -> str | None:
    """'diffusers' or 'ldm' from the first component of one UNet path; None if it tells neither."""
    root = strip_unet_prefix(path).split(".", 1)[0]
    if root in _DIFFUSERS_ROOTS:
        return "diffusers"
    if root in _LDM_ROOTS:
        return "ldm"
    return None


def strip_unet_prefix(path: str) -> str:
    for prefix in ("model.diffusion_model.", "diffusion_model."):
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


_UNDERSCORED_BLOCK = re.compile(r"^(down_blocks|up_blocks)_(\d+)_(resnets|attentions|downsamplers|upsamplers)_(\d+)_(.+)$"
                                r"|^(mid_block)_(resnets|attentions)_(\d+)_(.+)$")
_UNDERSCORED_TOP = {name.replace(".", "_"): name for name in _TOP_LEVEL}


def dotted_diffusers_unet(underscored: str) -> str:
    """A diffusers UNet path from its fully underscored form (LyCORIS's `lycoris_…` names, as
    SimpleTuner writes them): the block structure dotted, which is what the ldm map reads; the
    block's inner path kept as one underscored part (kohya names underscore it anyway; a resnet's
    inner path is one member, `time_emb_proj`, `conv_shortcut`, …)."""
    if underscored in _UNDERSCORED_TOP:
        return _UNDERSCORED_TOP[underscored]
    m = _UNDERSCORED_BLOCK.match(underscored)
    if m is None:
        raise KeyMapError(f"{underscored!r} is not an underscored diffusers UNet module path")
    return ".".join(g for g in m.groups() if g is not None)

"""Module and state-dict names across the places a Stable Diffusion weight lives.

Naming families handled (SD1.x, SD2.x, SDXL and their text encoders):
- diffusers UNet paths       down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
- ldm / SGM UNet paths       input_blocks.1.1.transformer_blocks.0.attn1.to_q
  (in a single-file checkpoint behind `model.diffusion_model.`, in ComfyUI behind `diffusion_model.`)
- Hugging Face CLIP paths    text_model.encoder.layers.0.self_attn.q_proj
- OpenCLIP paths             transformer.resblocks.0.attn.in_proj_weight (q, k, v fused by rows)
- kohya adapter names        lora_unet_<path with dots → underscores>, lora_te_, lora_te1_, lora_te2_

The diffusers ↔ ldm UNet map is derived from the block layout found in the names themselves
(levels, resnets per level, which levels have attention), so it works for any UNet in the
SD family, including the reduced ones used in tests, rather than from a hard-coded table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Sequence

Network = Literal["unet", "te", "te1", "te2"]
Base = Literal["sd1", "sd2", "sdxl"]

NETWORKS: tuple[str, ...] = ("unet", "te", "te1", "te2")
BASES: tuple[str, ...] = ("sd1", "sd2", "sdxl")
KOHYA_PREFIX: dict[str, str] = {"unet": "lora_unet_", "te": "lora_te_", "te1": "lora_te1_", "te2": "lora_te2_"}

# which text-encoder networks a base has, and the naming family of each encoder's checkpoint weights
TEXT_ENCODERS: dict[str, tuple[str, ...]] = {"sd1": ("te",), "sd2": ("te",), "sdxl": ("te1", "te2")}
OPEN_CLIP_ENCODERS = {("sd2", "te"), ("sdxl", "te2")}

# single-file (ldm/SGM) checkpoint prefixes
CHECKPOINT_PREFIX: dict[tuple[str, str], str] = {
    ("sd1", "unet"): "model.diffusion_model.",
    ("sd2", "unet"): "model.diffusion_model.",
    ("sdxl", "unet"): "model.diffusion_model.",
    ("sd1", "te"): "cond_stage_model.transformer.",
    ("sd2", "te"): "cond_stage_model.model.",
    ("sdxl", "te1"): "conditioner.embedders.0.transformer.",
    ("sdxl", "te2"): "conditioner.embedders.1.model.",
}

# ComfyUI state-dict prefixes (model.model.state_dict() / clip.cond_stage_model.state_dict());
# ComfyUI converts OpenCLIP encoders to the Hugging Face layout when it loads them.
COMFY_PREFIX: dict[tuple[str, str], str] = {
    ("sd1", "unet"): "diffusion_model.",
    ("sd2", "unet"): "diffusion_model.",
    ("sdxl", "unet"): "diffusion_model.",
    ("sd1", "te"): "clip_l.transformer.",
    ("sd2", "te"): "clip_h.transformer.",
    ("sdxl", "te1"): "clip_l.transformer.",
    ("sdxl", "te2"): "clip_g.transformer.",
}


class KeyMapError(ValueError):
    """A name that does not belong to the naming family it was given as."""


def kohya_unet_style(base: str) -> str:
    """The UNet path style kohya sd-scripts writes for a base: diffusers for SD1/2, ldm for SDXL."""
    return "ldm" if base == "sdxl" else "diffusers"


def kohya_key(network: str, module_path: str) -> str:
    """`lora_unet_down_blocks_0_…` from a network and a module path (already in kohya's style)."""
    if network not in KOHYA_PREFIX:
        raise KeyMapError(f"unknown network {network!r}; expected one of {', '.join(NETWORKS)}")
    return KOHYA_PREFIX[network] + module_path.replace(".", "_")


def split_kohya_key(key: str) -> tuple[str, str]:
    """('te1', 'text_model_encoder_…') from 'lora_te1_text_model_encoder_…' (module part only)."""
    for network in ("te1", "te2", "te", "unet"):  # longest prefixes first
        prefix = KOHYA_PREFIX[network]
        if key.startswith(prefix):
            return network, key[len(prefix):]
    raise KeyMapError(f"{key!r} has no kohya prefix ({', '.join(KOHYA_PREFIX.values())})")


def resolve_kohya(keys: Iterable[str], module_paths: Iterable[str], network: str) -> dict[str, str]:
    """Map kohya module names to module paths of a model, for those that exist.

    Underscores are ambiguous (`to_q`, `transformer_blocks`), so the only sound reverse map is
    to name every module of the target model the kohya way and look the keys up.
    """
    table = {kohya_key(network, path): path for path in module_paths}
    return {key: table[key] for key in keys if key in table}


def detect_naming(paths: Iterable[str]) -> str:
    """Naming family of a set of UNet or text-encoder module paths/keys."""
    names = list(paths)
    joined = "\n".join(names[:4000])
    if re.search(r"(^|\.)down_blocks\.\d+\.", joined, re.M) or re.search(r"(^|\.)mid_block\.", joined, re.M):
        return "diffusers"
    if re.search(r"(^|\.)input_blocks\.\d+\.", joined, re.M):
        return "ldm"
    if re.search(r"(^|\.)(text_model\.)?encoder\.layers\.\d+\.(self_attn|mlp)", joined, re.M):
        return "hf_clip"  # transformers ≥ 5 drops the text_model. root of CLIPTextModel
    if re.search(r"(^|\.)transformer\.resblocks\.\d+\.", joined, re.M):
        return "open_clip"
    raise KeyMapError("could not tell the naming family (diffusers, ldm, Hugging Face CLIP, OpenCLIP) of these names")


def detect_base(weight_shapes: Mapping[str, Sequence[int]]) -> str | None:
    """sd1 / sd2 / sdxl from a UNet's cross-attention key width (attn2 k projection: 768 / 1024 / 2048)."""
    for name, shape in weight_shapes.items():
        if re.search(r"attn2\.to_k(\.weight)?$", name) and len(shape) == 2:
            return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(int(shape[1]))
    return None


# --------------------------------------------------------------------------- UNet layout


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
        names = [_strip_unet_prefix(p) for p in paths]
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
        return self._translate(_strip_unet_prefix(ldm_path), self._to_diffusers, _RESNET_LDM_TO_DIFFUSERS, "ldm")


_DIFFUSERS_ROOTS = {"down_blocks", "up_blocks", "mid_block", "time_embedding", "add_embedding", "conv_in", "conv_norm_out", "conv_out"}
_LDM_ROOTS = {"input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out"}


def unet_style(path: str) -> str | None:
    """'diffusers' or 'ldm' from the first component of one UNet path; None if it tells neither."""
    root = _strip_unet_prefix(path).split(".", 1)[0]
    if root in _DIFFUSERS_ROOTS:
        return "diffusers"
    if root in _LDM_ROOTS:
        return "ldm"
    return None


def _strip_unet_prefix(path: str) -> str:
    for prefix in ("model.diffusion_model.", "diffusion_model."):
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


# --------------------------------------------------------------------------- text encoders

_HF_TO_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_OPEN_CLIP_TO_HF_LAYER = {v: k for k, v in _HF_TO_OPEN_CLIP_LAYER.items()}
_HF_TO_OPEN_CLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",  # stored transposed in OpenCLIP
}
_QKV_INDEX = {"q_proj": 0, "k_proj": 1, "v_proj": 2}


@dataclass(frozen=True)
class WeightSlot:
    """Where a Hugging Face CLIP parameter lives in an OpenCLIP state dict.

    rows: (index, of) — the parameter is row block `index` of `of` equal blocks (q, k, v of the
    fused in_proj); transposed: stored as the transpose (text_projection).
    """

    key: str
    rows: tuple[int, int] | None = None
    transposed: bool = False


def hf_clip_to_open_clip(hf_key: str) -> WeightSlot:
    """OpenCLIP location of a Hugging Face CLIP text-model parameter key (SD2 / SDXL te2)."""
    if hf_key in _HF_TO_OPEN_CLIP_TOP:
        return WeightSlot(_HF_TO_OPEN_CLIP_TOP[hf_key], transposed=hf_key == "text_projection.weight")
    m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_key)
    if not m:
        raise KeyMapError(f"{hf_key!r} is not a Hugging Face CLIP text-model parameter")
    layer, member, kind = m.groups()
    base = f"transformer.resblocks.{layer}."
    attn = re.fullmatch(r"self_attn\.(q_proj|k_proj|v_proj)", member)
    if attn:
        return WeightSlot(f"{base}attn.in_proj_{kind}", rows=(_QKV_INDEX[attn.group(1)], 3))
    if member not in _HF_TO_OPEN_CLIP_LAYER:
        raise KeyMapError(f"{hf_key!r}: no OpenCLIP counterpart for {member!r}")
    return WeightSlot(f"{base}{_HF_TO_OPEN_CLIP_LAYER[member]}.{kind}")


def open_clip_to_hf(open_clip_key: str) -> list[str]:
    """Hugging Face CLIP key(s) of an OpenCLIP parameter (a fused in_proj gives q, k and v)."""
    for hf, oc in _HF_TO_OPEN_CLIP_TOP.items():
        if oc == open_clip_key:
            return [hf]
    m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", open_clip_key)
    m_fused = re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", open_clip_key)
    if m_fused:
        layer, kind = m_fused.groups()
        return [f"text_model.encoder.layers.{layer}.self_attn.{p}.{kind}" for p in ("q_proj", "k_proj", "v_proj")]
    if not m or m.group(2) not in _OPEN_CLIP_TO_HF_LAYER:
        raise KeyMapError(f"{open_clip_key!r} is not an OpenCLIP text-transformer parameter with a Hugging Face counterpart")
    layer, member, kind = m.groups()
    return [f"text_model.encoder.layers.{layer}.{_OPEN_CLIP_TO_HF_LAYER[member]}.{kind}"]


# --------------------------------------------------------------------------- whole-model naming


def _check(base: str, network: str) -> None:
    if base not in BASES:
        raise KeyMapError(f"unknown base model {base!r}; expected one of {', '.join(BASES)}")
    if network != "unet" and network not in TEXT_ENCODERS[base]:
        raise KeyMapError(f"{base} has no text encoder network {network!r} (it has {', '.join(TEXT_ENCODERS[base])})")


def checkpoint_slot(base: str, network: str, param_key: str, unet_map: UNetKeyMap | None = None) -> WeightSlot:
    """Key of a parameter in an original (ldm/SGM) single-file checkpoint.

    param_key is diffusers-style for the UNet (ldm-style also accepted) and Hugging Face style
    for text encoders.
    """
    _check(base, network)
    prefix = CHECKPOINT_PREFIX[(base, network)]
    if network == "unet":
        stripped = _strip_unet_prefix(param_key)
        if unet_style(stripped) == "ldm":
            return WeightSlot(prefix + stripped)
        if unet_map is None:
            raise KeyMapError("a diffusers UNet key needs the UNet's layout (unet_map) to be placed in a checkpoint")
        return WeightSlot(prefix + unet_map.to_ldm(stripped))
    if (base, network) in OPEN_CLIP_ENCODERS:
        slot = hf_clip_to_open_clip(param_key)
        return WeightSlot(prefix + slot.key, slot.rows, slot.transposed)
    return WeightSlot(prefix + param_key)


def comfy_key(base: str, network: str, param_key: str, unet_map: UNetKeyMap | None = None) -> str:
    """Key of a parameter in ComfyUI's model / CLIP state dict (what ModelPatcher patches)."""
    _check(base, network)
    prefix = COMFY_PREFIX[(base, network)]
    if network == "unet":
        stripped = _strip_unet_prefix(param_key)
        if unet_style(stripped) == "ldm":
            return prefix + stripped
        if unet_map is None:
            raise KeyMapError("a diffusers UNet key needs the UNet's layout (unet_map) to be placed in a ComfyUI model")
        return prefix + unet_map.to_ldm(stripped)
    return prefix + param_key


def kohya_module_key(base: str, network: str, module_path: str, unet_map: UNetKeyMap | None = None) -> str:
    """kohya adapter name of a module, in the path style kohya writes for that base.

    module_path may be diffusers- or ldm-style for the UNet (converted as needed, which needs
    unet_map when the styles differ) and Hugging Face style for text encoders.
    """
    _check(base, network)
    if network != "unet":
        return kohya_key(network, module_path)
    path = _strip_unet_prefix(module_path)
    style = unet_style(path)
    wanted = kohya_unet_style(base)
    if style is None or style == wanted:
        return kohya_key("unet", path)
    if unet_map is None:
        raise KeyMapError(f"{module_path!r} is {style}-style but {base} kohya names are {wanted}-style; pass unet_map")
    converted = unet_map.to_ldm(path) if wanted == "ldm" else unet_map.to_diffusers(path)
    return kohya_key("unet", converted)


def kohya_unet_aliases(module_path: str, unet_map: UNetKeyMap) -> set[str]:
    """Both kohya names (diffusers- and ldm-style) of a UNet module: readers accept either."""
    path = _strip_unet_prefix(module_path)
    names = {kohya_key("unet", path)}
    style = unet_style(path)
    if style == "diffusers":
        names.add(kohya_key("unet", unet_map.to_ldm(path)))
    elif style == "ldm":
        names.add(kohya_key("unet", unet_map.to_diffusers(path)))
    return names


# --------------------------------------------------------------------------- single-file checkpoints


def checkpoint_modules(shapes: Mapping[str, Sequence[int]], base: str) -> dict[str, tuple[WeightSlot, tuple[int, ...]]]:
    """{kohya module name: (where its weight lives, the weight's shape)} for a single-file checkpoint.

    shapes: the checkpoint's keys → tensor shapes (read from the header; no tensors needed).
    Covers every 2-D (linear) and 4-D (conv) `.weight` of the UNet and text encoders; a fused
    OpenCLIP in_proj yields q, k and v entries with their row slots.
    """
    _check(base, "unet")
    out: dict[str, tuple[WeightSlot, tuple[int, ...]]] = {}
    unet_prefix = CHECKPOINT_PREFIX[(base, "unet")]
    unet_keys = [k[len(unet_prefix):] for k in shapes if k.startswith(unet_prefix)]
    if not unet_keys:
        raise KeyMapError(f"no {unet_prefix}* keys: not a single-file {base} checkpoint")
    unet_map = UNetKeyMap.from_names(unet_keys)
    for key in unet_keys:
        shape = tuple(int(d) for d in shapes[unet_prefix + key])
        if key.endswith(".weight") and len(shape) in (2, 4):
            name = kohya_module_key(base, "unet", key[: -len(".weight")], unet_map)
            out[name] = (WeightSlot(unet_prefix + key), shape)
    for network in TEXT_ENCODERS[base]:
        prefix = CHECKPOINT_PREFIX[(base, network)]
        for full, raw_shape in shapes.items():
            if not full.startswith(prefix):
                continue
            key = full[len(prefix):]
            shape = tuple(int(d) for d in raw_shape)
            if (base, network) in OPEN_CLIP_ENCODERS:
                if not key.startswith("transformer.resblocks.") or not (key.endswith(".weight") or key.endswith("in_proj_weight")):
                    continue
                if len(shape) != 2:
                    continue
                for hf in open_clip_to_hf(key):
                    slot = hf_clip_to_open_clip(hf)
                    rows = shape[0] // 3 if slot.rows else shape[0]
                    out[kohya_key(network, hf[: -len(".weight")])] = (WeightSlot(full, slot.rows, slot.transposed), (rows, shape[1]))
            elif key.endswith(".weight") and len(shape) == 2 and ".encoder.layers." in key:
                out[kohya_key(network, key[: -len(".weight")])] = (WeightSlot(full), shape)
    return out

"""Which modules of a model get an adapter: presets and name patterns."""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable, Sequence

import torch.nn as nn

# attention q/k/v/out in diffusers / ldm / ComfyUI (attn1.to_q, attn2.to_out.0, attn.to_k of DiTs)
# and in Hugging Face / ComfyUI CLIP (self_attn.q_proj …); the transformer families' per-stream
# projections in their ComfyUI names: Flux / Chroma / Flux.2 img_attn / txt_attn qkv + proj and the
# single-stream blocks' fused linear1 / linear2 (their only attention weights), SD3's x_block /
# context_block attn(2).qkv + proj, NextDiT's attention.qkv / out, Wan's self_attn / cross_attn
# q k v o; and the same modules in diffusers names
_ATTN = (r"(^|\.)(attn\d*\.(to_q|to_k|to_v|to_out\.0|to_out|add_q_proj|add_k_proj|add_v_proj|to_add_out|to_qkv_mlp_proj)"
         r"|self_attn\.(q_proj|k_proj|v_proj|out_proj)"
         r"|(img_attn|txt_attn)\.(qkv|proj)|single_blocks\.\d+\.(linear1|linear2)"
         r"|single_transformer_blocks\.\d+\.(proj_mlp|proj_out)"
         r"|(x_block|context_block)\.attn2?\.(qkv|proj)|attention\.(qkv|out|to_q|to_k|to_v|to_out\.0)"
         r"|(self_attn|cross_attn)\.(q|k|v|o|k_img|v_img))$")
# feed-forward: diffusers / ldm GEGLU projection and output, CLIP MLP, and the transformer
# families' MLPs (Flux img_mlp / txt_mlp, SD3 mlp.fc*, NextDiT SwiGLU w1-w3, Wan ffn) in both namings
_FF = (r"(^|\.)(ff(_context)?\.net\.(0\.proj|2)|mlp\.fc1|mlp\.fc2|ff(_context)?\.(linear_in|linear_out)"
       r"|(img_mlp|txt_mlp)\.(0|2|net\.0\.proj|net\.2)|feed_forward\.(w1|w2|w3|linear_1|linear_2|linear_3)"
       r"|ffn\.(0|2|net\.0\.proj|net\.2))$")

PRESETS: dict[str, str] = {
    "attn": "attention q/k/v/out projections (the paper's default)",
    "attn+ff": "attention projections and transformer feed-forward layers",
    "all-linear": "every nn.Linear",
    "all": "every nn.Linear and ungrouped nn.Conv2d",
}


def is_adaptable(module: nn.Module) -> bool:
    """Layer types KronA can adapt: Linear, and Conv2d without groups."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _expand(targets: str | Sequence[str]) -> list[str]:
    items = [targets] if isinstance(targets, str) else list(targets)
    expanded: list[str] = []
    for item in items:
        if item == "attn+ff":
            expanded += ["attn", "ff"]
        else:
            expanded.append(item)
    return expanded


def validate_targets(targets: str | Sequence[str]) -> None:
    """Raise ValueError for an unknown preset or an invalid regular expression."""
    for item in _expand(targets):
        if item in ("attn", "ff", "all-linear", "all"):
            continue
        if item.startswith("re:"):
            try:
                re.compile(item[3:])
            except re.error as exc:
                raise ValueError(f"target pattern {item!r} is not a valid regular expression: {exc}") from None
        elif not any(ch in item for ch in "*?[") and "." not in item:
            raise ValueError(
                f"unknown target {item!r}: use a preset ({', '.join(PRESETS)}), a glob over module "
                "paths such as '*attn2.to_k', or 're:<regex>'"
            )


def matches(name: str, module: nn.Module, targets: str | Sequence[str]) -> bool:
    """Whether a (name, module) pair is selected by a target spec."""
    return is_adaptable(module) and path_matches(name, isinstance(module, nn.Linear), targets)


def path_matches(name: str, linear: bool, targets: str | Sequence[str]) -> bool:
    """Whether the module path of an adaptable layer (a Linear, or a conv where `linear` is false)
    is selected by a target spec: for weights known by name and shape only (checkpoints, counts)."""
    for item in _expand(targets):
        if item == "attn" and linear and re.search(_ATTN, name):
            return True
        if item == "ff" and linear and re.search(_FF, name):
            return True
        if item == "all-linear" and linear:
            return True
        if item == "all":
            return True
        if item not in ("attn", "ff", "all-linear", "all") and _pattern_matches(item, name):
            return True
    return False


def select(
    named_modules: Iterable[tuple[str, nn.Module]],
    targets: str | Sequence[str] = "attn",
    exclude: str | Sequence[str] | None = None,
) -> list[tuple[str, nn.Module]]:
    """The adaptable modules selected by `targets` and not by `exclude` (patterns only)."""
    validate_targets(targets)
    excluded = [exclude] if isinstance(exclude, str) else list(exclude or [])
    chosen = []
    for name, module in named_modules:
        if not name or not matches(name, module, targets):
            continue
        if any(_pattern_matches(p, name) for p in excluded):
            continue
        chosen.append((name, module))
    return chosen

"""KronA files for the tiny single-file checkpoints, built from the checkpoint's header alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from krona_core import families
from krona_core.naming.kohya import split_kohya_key
from krona_core.files.writer import build_metadata, write
from krona_core.ops.shapes import choose_shape

ATTN = re.compile(r"(attn\d_to_(q|k|v|out_0)|self_attn_(q|k|v|out)_proj)$")


def checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return {k: tuple(v["shape"]) for k, v in header.items()}


def random_krona(checkpoint: Path, out: Path, base: str, *, seed: int = 0, a1: int = 64, a2: int = 8,
                 scale: float = 0.05, networks: tuple[str, ...] = ("unet", "te", "te1", "te2"),
                 trigger_words: tuple[str, ...] = ("sks",), every: int = 1) -> Path:
    """A seeded random KronA file adapting the attention layers of `checkpoint` (every n-th one)."""
    g = torch.Generator().manual_seed(seed)
    modules = {}
    found = families.get(base).checkpoint_modules(checkpoint_shapes(checkpoint))
    names = [n for n in sorted(found) if ATTN.search(n) and split_kohya_key(n)[0] in networks]
    for name in names[::every]:
        shape = choose_shape(found[name][1], a1, a2)
        w1 = torch.randn(shape.w1_shape, generator=g) * 4 * scale
        w2 = torch.randn(shape.w2_shape, generator=g) * scale
        modules[name] = (w1, w2)
    title = out.name.removesuffix(".krona.safetensors").removesuffix(".safetensors")  # as krona_core.save names it
    meta = build_metadata(modules, base_model=base, title=title, trigger_words=list(trigger_words))
    return Path(write(out, modules, meta, overwrite=True))


def random_dit_krona(checkpoint: Path, out: Path, base: str, *, targets: str = "attn+ff", seed: int = 0,
                     a1: int = 64, a2: int = 8, strength: float = 0.3) -> Path:
    """A seeded random KronA file of a diffusion-transformer checkpoint (original / ComfyUI names)
    on the modules a target preset selects; ΔW entries about strength / √fan-in, like the weights'."""
    from krona_core.adapters.targets import path_matches

    g = torch.Generator().manual_seed(seed)
    family = families.get(base)
    modules = {}
    for name, (slot, shape) in sorted(family.checkpoint_modules(checkpoint_shapes(checkpoint)).items()):
        path = family.original_path(slot.key.removesuffix(".weight"))[0]
        if len(shape) == 2 and path_matches(path, True, targets):
            kron = choose_shape(shape, a1, a2)
            w1 = torch.randn(kron.w1_shape, generator=g)
            w2 = torch.randn(kron.w2_shape, generator=g) * strength / shape[1] ** 0.5
            modules[name] = (w1, w2)
    title = out.name.removesuffix(".krona.safetensors")
    meta = build_metadata(modules, base_model=base, title=title, targets=targets, trigger_words=["sks"])
    return Path(write(out, modules, meta, overwrite=True))

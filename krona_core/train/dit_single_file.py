"""A FLUX.1 (BFL) or SD3 / SD3.5 (SAI MMDiT) single-file transformer as a diffusers transformer,
offline: the family detected by the registry, the config read off the tensor shapes
(`families.dit_checkpoint`), the weights converted by diffusers' own single-file converters and
loaded strictly (a missing, unexpected or mis-shaped tensor is refused, naming the file and key).

diffusers' FLUX.1 converter splits each single block's `linear1` at FLUX.1's width (3072) whatever
the file's; it converts a stand-in of that size, and the real `linear1` is split here into the rows
the family's naming table gives (q, k, v, MLP input = 1, 1, 1, 4 parts), at the file's own width.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import families
from ..families.dit import DiTFamily, checkpoint_prefix
from ..families.dit_checkpoint import transformer_config
from ..files.header import read_header
from ..files.model import KronAFileError
from .diffusers_backend import BaseLoadError

FLUX_WIDTH = 3072  # the width diffusers' FLUX.1 converter splits linear1 at
CONVERTERS = {"flux1": "convert_flux_transformer_checkpoint_to_diffusers",
              "sd3": "convert_sd3_transformer_checkpoint_to_diffusers"}


class SingleFileError(BaseLoadError):
    """A single-file transformer that cannot be loaded, with the file and the reason."""


def _flow_family(shapes) -> DiTFamily | None:
    family = families.detect(shapes)
    return family if isinstance(family, DiTFamily) and family.prediction == "flow" else None


def single_file_family(path: str | os.PathLike) -> DiTFamily | None:
    """The flow-transformer family of a .safetensors file from its header alone, else None (an SD
    checkpoint, an unknown model, a file that is not safetensors)."""
    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    try:
        header = read_header(path)
    except KronAFileError:
        return None
    return _flow_family({k: e.shape for k, e in header.entries.items()})


def _diffusion_model(path: Path) -> tuple[DiTFamily, str, dict[str, tuple[int, ...]]]:
    """(family, prefix, {key without the prefix: shape} of the diffusion model) from the file's
    header alone (a full checkpoint's text encoders and VAE are never read)."""
    try:
        header = read_header(path)
    except KronAFileError as exc:
        raise SingleFileError(str(exc)) from None
    shapes = {k: e.shape for k, e in header.entries.items()}
    family = _flow_family(shapes)
    if family is None or family.name not in CONVERTERS:
        what = family.title if family else "a model of no family the trainer knows"
        raise SingleFileError(f"{path}: {what}; single-file transformers load for FLUX.1 and SD3 / SD3.5 "
                              "(BFL / SAI naming), other bases as diffusers folders")
    prefix = checkpoint_prefix(shapes, family.original_roots)
    model = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)} if prefix is not None else {}
    if not model or any(k.startswith("transformer_blocks.") for k in model):  # diffusers' block names
        raise SingleFileError(f"{path}: {family.title} tensors in diffusers naming: give the diffusers folder "
                              "(transformer/ with its config.json), not the file alone")
    return family, prefix, model


def _split_linear1(family: DiTFamily, converted: dict[str, torch.Tensor], originals: dict[str, torch.Tensor]) -> None:
    """Each single block's linear1 rows into the diffusers modules the family's table names."""
    for key, fused in originals.items():
        path, kind = key.rsplit(".", 1)
        for diffusers_path, part in family.key_map().parts_of(path):
            start, size = part.rows(fused.shape[0]) if part is not None else (0, fused.shape[0])
            converted[f"{diffusers_path}.{kind}"] = fused[start: start + size].clone()


def convert(family: DiTFamily, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The diffusers state dict of a prefix-free original-named state dict, by diffusers' converter;
    tensors of the diffusion model it does not consume are refused as unexpected."""
    from diffusers.loaders import single_file_utils

    originals = {}
    if family.name == "flux1":  # linear1: a stand-in the size the converter splits at, the real rows after
        for key in [k for k in state if k.startswith("single_blocks.") and ".linear1." in k]:
            originals[key] = state.pop(key)
            shape = (7 * FLUX_WIDTH, *originals[key].shape[1:])
            state[key] = torch.empty(shape, device="meta")
    try:
        converted = getattr(single_file_utils, CONVERTERS[family.name])(state)
    except KeyError as exc:
        raise SingleFileError(f"{path}: no tensor {exc.args[0]!r}: not a complete {family.title} transformer") from None
    if state:
        raise SingleFileError(f"{path}: {len(state)} unexpected {family.title} tensor(s), e.g. {sorted(state)[:3]}")
    _split_linear1(family, converted, originals)
    return converted


def _load_strict(model: torch.nn.Module, converted: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in converted]
    unexpected = [k for k in converted if k not in own]
    if missing or unexpected:
        raise SingleFileError(f"{path}: the file does not match the transformer its shapes describe "
                              f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})" for k, v in converted.items() if v.shape != own[k].shape]
    if wrong:
        raise SingleFileError(f"{path}: {len(wrong)} tensor(s) of the wrong shape, e.g. {wrong[0]}")
    model.load_state_dict(converted, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise SingleFileError(f"{path}: {len(left)} tensor(s) of the transformer not in the file, e.g. {left[:3]}")


def load_transformer_file(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The diffusers transformer (FluxTransformer2DModel / SD3Transformer2DModel, eval mode) of a
    FLUX.1 or SD3 / SD3.5 .safetensors file, in `dtype`; never touches the network."""
    import diffusers
    from safetensors import safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise SingleFileError(f"{path}: only .safetensors transformers are loaded (never pickle)")
    family, prefix, shapes = _diffusion_model(path)
    try:
        config = transformer_config(family, shapes)
    except families.FamilyError as exc:
        raise SingleFileError(f"{path}: {exc}") from None
    with torch.device("meta"):
        model = getattr(diffusers, family.diffusers_class)(**config)
    with safe_open(str(path), "pt") as fh:
        state = {k: fh.get_tensor(prefix + k).to(dtype) for k in shapes}
    _load_strict(model, convert(family, state, path), path)
    return model.eval()

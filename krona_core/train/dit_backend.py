"""The trainer's backend for diffusers flow-matching transformers (Flux.1, SD3 / SD3.5): a
`Denoiser` over the transformer, its VAE (optional: cached latents train without one) and text
embeddings precomputed into a file (`embeddings.py`), so no multi-GB text encoder is loaded.

The transformer's separate q / k / v projections are fused first (diffusers' own
`fuse_qkv_projections`): the fused `to_qkv` / `to_added_qkv` weights are the original models'
`img_attn.qkv` / `txt_attn.qkv` (Flux) and `x_block.attn.qkv` / `context_block.attn.qkv` (SD3),
which is how files name them and ComfyUI's LoraLoader applies them (one Kronecker pair per fused
weight). Flux's single-stream `linear1` has no diffusers module as a whole: its rows are the fused
`attn.to_qkv` (q, k, v) and `proj_mlp` (the MLP input), both fed the same normalised states. The
trainer adapts it as ONE factor pair of the fused (7·hidden × hidden) shape, saved as
`single_blocks.N.linear1` like ComfyUI's Train KronA's: `fuse_projections` reports which rows each
module computes (from the family's diffusers → original table) and `attach(fused=…)` hooks the
pair's row windows on both (`ops.matmul.kron_linear_rows`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from .. import families
from ..families.dit import DiTFamily
from ..families.flow import SigmaSampling
from ..naming.kohya import KeyMapError
from ..ops.bypass import RowSlice
from .denoiser import Cond, SizeInfo
from .diffusers_backend import BaseLoadError
from .dit_attention import use_fused_joint_processor
from .dit_single_file import load_transformer_file, single_file_family
from .embeddings import EmbeddingTable

#: the trainable modules of the `attn` preset on a fused diffusers transformer (module-path regex)
DIT_ATTN_TARGETS = ["re:^transformer_blocks\\.\\d+\\.attn2?\\.(to_qkv|to_added_qkv|to_out\\.0|to_add_out)$",
                    "re:^single_transformer_blocks\\.\\d+\\.(attn\\.to_qkv|proj_mlp|proj_out)$"]
DIT_FF_TARGETS = "re:^transformer_blocks\\.\\d+\\.ff(_context)?\\.net\\.(0\\.proj|2)$"
#: the separate projections diffusers' fuse_qkv_projections concatenates, by the fused module's name
FUSED_QKV = {"to_qkv": ("to_q", "to_k", "to_v"), "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}
FusedWeights = dict[str, list[tuple[str, RowSlice]]]  # original fused weight → [(module path, its rows)]


class DiTLoadError(BaseLoadError):
    """A transformer base that cannot be loaded offline (or run as asked), with the reason."""


def fuse_projections(transformer: torch.nn.Module, family: DiTFamily) -> FusedWeights:
    """Fuse q / k / v (and the context stream's) with diffusers' own method, and drop the separate
    projections the fused processors no longer call (so no adapter lands on an unused layer).

    Returns the original fused weights whose rows more than one module of the fused transformer
    computes, with each module's rows (Flux's single-block `linear1`: `attn.to_qkv` and `proj_mlp`)."""
    windows = _row_windows(transformer, family)
    transformer.fuse_qkv_projections()
    for prefix, module in list(transformer.named_modules()):
        if getattr(module, "fused_projections", False) and hasattr(module, "to_qkv"):
            for fused, names in FUSED_QKV.items():
                parts = [windows.pop(f"{prefix}.{n}") for n in names if f"{prefix}.{n}" in windows]
                if parts:
                    windows[f"{prefix}.{fused}"] = _joined(parts, f"{prefix}.{fused}")
                for name in names:
                    if isinstance(getattr(module, name, None), torch.nn.Linear):
                        delattr(module, name)
    weights: FusedWeights = {}
    for name, (weight, rows) in windows.items():
        weights.setdefault(weight, []).append((name, rows))
    return {w: sorted(parts, key=lambda p: p[1].start) for w, parts in weights.items() if len(parts) > 1}


def _row_windows(transformer: torch.nn.Module, family: DiTFamily) -> dict[str, tuple[str, RowSlice]]:
    """{module path: (original fused weight, the rows it computes)} of the row-part modules."""
    totals = family.weight_shapes(transformer)
    windows = {}
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear):
            try:
                path, part = family.original_path(name)
            except KeyMapError:
                continue
            if part is not None:
                windows[name] = (path, RowSlice(*part.rows(totals[path][0])))
    return windows


def _joined(parts: list[tuple[str, RowSlice]], name: str) -> tuple[str, RowSlice]:
    """The rows of a fused projection from those of the projections it concatenates."""
    start, end = parts[0][1].start, parts[-1][1].start + parts[-1][1].size
    if len({p for p, _ in parts}) != 1 or sum(r.size for _, r in parts) != end - start:
        raise DiTLoadError(f"{name}: its projections are not consecutive rows of one original weight ({parts})")
    return parts[0][0], RowSlice(start, end - start)


class DiTDenoiser:
    """Flux.1 ([dev] with its guidance input, [schnell]) and SD3 / SD3.5 transformers."""

    prediction_type = "flow"
    alphas_cumprod = None

    def __init__(self, transformer: torch.nn.Module, embeddings: EmbeddingTable, vae=None,
                 device: str | torch.device = "cpu", guidance: float = 1.0, gradient_checkpointing: bool = False):
        self.transformer, self.vae, self.embeddings = transformer, vae, embeddings
        self.device = torch.device(device)
        self.family = next((f for f in families.FAMILIES if getattr(f, "diffusers_class", None) == type(transformer).__name__
                            and f.prediction == "flow"), None)
        if self.family is None:
            raise DiTLoadError(f"{type(transformer).__name__} is not a transformer of a family the trainer knows")
        self.flux = self.family.name == "flux1"
        self.sigma_sampling = self.family.sigma_sampling or SigmaSampling()
        self.guidance = guidance
        #: fused weights whose rows several modules compute: one factor pair each (`attach(fused=…)`)
        self.fused_weights = fuse_projections(transformer, self.family)
        use_fused_joint_processor(transformer)  # SD3: diffusers' fused processor skips the qk norms
        for module in (transformer, vae):
            if module is not None:
                module.requires_grad_(False)
                module.to(self.device)
        if gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
            transformer.train()  # diffusers checkpoints only in training mode (no dropout in these models)
        self.scaling = float(getattr(getattr(vae, "config", None), "scaling_factor", 1.0) or 1.0)
        self.shift = float(getattr(getattr(vae, "config", None), "shift_factor", 0.0) or 0.0)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.transformer}

    def resolve_targets(self, targets: str | list[str]) -> str | list[str]:
        """The presets in this model's module names: `attn` (and `attn+ff`) select the fused
        attention weights and, with ff, the MLPs; the row blocks of Flux's single-block linear1
        (`attn.to_qkv`, `proj_mlp`) are selected together, as one fused weight (`fused_weights`)."""
        if targets == "attn":
            return list(DIT_ATTN_TARGETS)
        if targets == "attn+ff":
            return [*DIT_ATTN_TARGETS, DIT_FF_TARGETS]
        return targets

    def encode_prompts(self, prompts: Sequence[str], sizes: Sequence[SizeInfo]) -> Cond:
        conds = [self.embeddings.get(p) for p in prompts]
        return {k: torch.cat([c[k] for c in conds]).to(self.device) for k in conds[0]}

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self.transformer.dtype
        states = cond["encoder_hidden_states"].to(self.device, dtype)
        pooled = cond["pooled_projections"].to(self.device, dtype)
        if not self.flux:
            return self.transformer(hidden_states=x_t.to(dtype), timestep=t * 1000, encoder_hidden_states=states,
                                    pooled_projections=pooled, return_dict=False)[0].float()
        from diffusers import FluxPipeline

        b, c, h, w = x_t.shape
        packed = FluxPipeline._pack_latents(x_t.to(dtype), b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, self.device, dtype)
        txt_ids = torch.zeros(states.shape[1], 3, device=self.device, dtype=dtype)
        guidance = (torch.full((b,), self.guidance, device=self.device, dtype=torch.float32)
                    if self.transformer.config.guidance_embeds else None)
        out = self.transformer(hidden_states=packed, timestep=t.to(dtype), guidance=guidance, pooled_projections=pooled,
                               encoder_hidden_states=states, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8).float()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            raise DiTLoadError("this base has no VAE: give cached latents, a VAE folder (the CLI's --vae) or a base with its vae/")
        latents = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist.mean
        return (latents - self.shift) * self.scaling

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            raise DiTLoadError("this base has no VAE: previews need one (the CLI's --vae)")
        return self.vae.decode(latents.to(self.device, self.vae.dtype) / self.scaling + self.shift).sample


def dit_family_of(path: str | Path) -> families.Family | None:
    """The transformer family of a diffusers folder (pipeline or transformer folder) or of a
    single-file transformer (FLUX.1, SD3 / SD3.5: read off its header), else None."""
    if Path(path).is_file():
        return single_file_family(path)
    family = families.for_diffusers_folder(path) if Path(path).is_dir() else None
    return family if getattr(family, "prediction", None) == "flow" else None


def load_dit(path: str | Path, embeddings: EmbeddingTable, device: str = "cpu", dtype: torch.dtype = torch.float32,
             guidance: float = 1.0, gradient_checkpointing: bool = False, vae: str | Path | None = None) -> DiTDenoiser:
    """A diffusers pipeline folder (transformer/ and optionally vae/), a transformer folder or a
    FLUX.1 / SD3 single-file transformer, offline; the transformer in `dtype` (e.g. bf16; the
    adapters stay float32), the VAE in float32: `vae` (a diffusers VAE folder, or a pipeline folder
    with vae/) else the base folder's vae/, else none (cached latents train without one)."""
    import diffusers

    path = Path(path)
    if path.is_file():
        transformer = load_transformer_file(path, dtype)
    else:
        folder = path / "transformer" if (path / "transformer" / "config.json").is_file() else path
        try:
            class_name = json.loads((folder / "config.json").read_text(encoding="utf-8"))["_class_name"]
            cls = getattr(diffusers, class_name)
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise DiTLoadError(f"{folder}: not a diffusers transformer folder ({exc})") from None
        transformer = cls.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
    return DiTDenoiser(transformer, embeddings, _vae(path, vae), device, guidance, gradient_checkpointing)


def _vae(base: Path, vae: str | Path | None):
    """The AutoencoderKL of `vae` (refused when it is no VAE folder), else of the base folder's vae/, else None."""
    import diffusers

    folder = Path(vae) if vae is not None else base / "vae"
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        if vae is not None:
            raise DiTLoadError(f"{vae}: not a diffusers VAE folder (no config.json in it or in its vae/)")
        return None
    return diffusers.AutoencoderKL.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)

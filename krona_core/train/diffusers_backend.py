"""The trainer's diffusers backend: a `Denoiser` over UNet + CLIP text encoder(s) + VAE, and
offline loading of bases from a diffusers folder or a single-file (ldm/SGM) checkpoint."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import families
from ..families.sd import VAE_CONFIG
from ..families.sd_checkpoint import unet_config_from_checkpoint
from .denoiser import Cond, SizeInfo

Tokenize = Callable[[Sequence[str]], torch.Tensor]


def sd_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                      zero_terminal_snr: bool = False) -> torch.Tensor:
    """The scaled-linear schedule of SD1.x/SD2.x/SDXL; with zero_terminal_snr, rescaled so that the
    last step is pure noise (Lin et al. 2023, Algorithm 1: √ᾱ shifted to end at 0 and scaled to keep
    its first value), which only v-prediction can train."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    ab = torch.cumprod(1 - betas, 0)
    if zero_terminal_snr:
        root = ab.sqrt()
        ab = ((root - root[-1]) * root[0] / (root[0] - root[-1])) ** 2
    return ab.float()


class DiffusersDenoiser:
    """SD1.x / SD2.x (one text encoder) and SDXL (two, pooled + size conditioning)."""

    def __init__(self, unet, vae, text_encoders: Sequence[torch.nn.Module], tokenizers: Sequence[Tokenize],
                 alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon", device: str | torch.device = "cpu",
                 family: families.Family | None = None):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction type must be epsilon or v_prediction, got {prediction_type!r}")
        self.unet, self.vae = unet, vae
        self.text_encoders = list(text_encoders)
        self.tokenizers = list(tokenizers)
        self.alphas_cumprod = alphas_cumprod.float().cpu()
        self.prediction_type = prediction_type
        self.device = torch.device(device)
        self.sdxl = len(self.text_encoders) == 2
        # the base's family (its default steps and resolution); read off the UNet when not given
        self.family = family or families.detect({n: tuple(m.weight.shape) for n, m in unet.named_modules()
                                                 if isinstance(m, torch.nn.Linear)})
        for module in (unet, vae, *self.text_encoders):
            module.requires_grad_(False)
            module.to(self.device)
        self.scaling = float(getattr(vae.config, "scaling_factor", 0.18215))

    def networks(self) -> dict[str, torch.nn.Module]:
        if self.sdxl:
            return {"unet": self.unet, "te1": self.text_encoders[0], "te2": self.text_encoders[1]}
        return {"unet": self.unet, "te": self.text_encoders[0]}

    def encode_prompts(self, prompts: Sequence[str], sizes: Sequence[SizeInfo]) -> Cond:
        if not self.sdxl:
            ids = self.tokenizers[0](list(prompts)).to(self.device)
            return {"encoder_hidden_states": self.text_encoders[0](ids)[0]}
        states, pooled = [], None
        for tokenize, encoder in zip(self.tokenizers, self.text_encoders):
            out = encoder(tokenize(list(prompts)).to(self.device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # text_embeds of the projection model (the second encoder)
        time_ids = torch.tensor([[*s.original, *s.crop, *s.target] for s in sizes], dtype=torch.float32, device=self.device)
        return {"encoder_hidden_states": torch.cat(states, dim=-1), "text_embeds": pooled, "time_ids": time_ids}

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        extra = {"added_cond_kwargs": {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}} if self.sdxl else {}
        return self.unet(x_t, t, encoder_hidden_states=cond["encoder_hidden_states"], **extra).sample

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist.mean * self.scaling

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.device, self.vae.dtype) / self.scaling).sample


def hf_tokenizer(tokenizer) -> Tokenize:
    """Wrap a transformers CLIPTokenizer as prompts → padded ids."""

    def tokenize(prompts: Sequence[str]) -> torch.Tensor:
        return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids

    return tokenize


class BaseLoadError(ValueError):
    """A base model that cannot be loaded offline, with the reason and what to pass instead."""


def _clip_tokenizer(directory: str | os.PathLike, open_clip: bool):
    from transformers import CLIPTokenizer

    directory = Path(directory)
    if not (directory / "vocab.json").is_file() or not (directory / "merges.txt").is_file():
        raise BaseLoadError(f"{directory}: expected a CLIP tokenizer folder with vocab.json and merges.txt")
    extra = {"pad_token": "!"} if open_clip else {}  # OpenCLIP pads with "!" (id 0), CLIP-L with <|endoftext|>
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77, **extra)


def find_tokenizer_dir(explicit: str | os.PathLike | None) -> Path:
    if explicit:
        return Path(explicit)
    comfy = os.environ.get("COMFYUI_PATH")
    if comfy and (Path(comfy) / "comfy" / "sd1_tokenizer" / "vocab.json").is_file():
        return Path(comfy) / "comfy" / "sd1_tokenizer"
    raise BaseLoadError("single-file checkpoints carry no tokenizer: pass --tokenizer DIR (a folder with vocab.json and "
                        "merges.txt, e.g. ComfyUI's comfy/sd1_tokenizer or a diffusers model's tokenizer/ folder)")


def load_diffusers_folder(path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype = torch.float32) -> DiffusersDenoiser:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = Path(path)
    index = json.loads((path / "model_index.json").read_text())
    kw = dict(local_files_only=True, torch_dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    encoders, tokenizers = [], []
    for te_name, tok_name in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        if te_name not in index or index[te_name][0] is None:
            continue
        cls = CLIPTextModelWithProjection if index[te_name][1] == "CLIPTextModelWithProjection" else CLIPTextModel
        encoders.append(cls.from_pretrained(path, subfolder=te_name, **kw))
        tokenizers.append(hf_tokenizer(CLIPTokenizer.from_pretrained(path, subfolder=tok_name, local_files_only=True)))
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    return DiffusersDenoiser(unet, vae, encoders, tokenizers, scheduler.alphas_cumprod, scheduler.config.prediction_type, device)


def load_single_file(path: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None, device: str = "cpu",
                     dtype: torch.dtype = torch.float32, prediction_type: str = "epsilon") -> DiffusersDenoiser:
    """Build diffusers models from an ldm/SGM single-file checkpoint, offline.

    The UNet config is read off the checkpoint's own shapes (so reduced and fine-tuned layouts
    load), text-encoder and VAE configs are the bases' real ones, weights are converted with
    diffusers' own single-file converters.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise BaseLoadError(f"{path}: only .safetensors checkpoints are loaded (never pickle)")
    state = load_file(str(path))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    family = families.detect(shapes)
    if family is None or not any(k.startswith(family.unet_prefix) for k in shapes):
        raise BaseLoadError(f"{path}: not a single-file checkpoint of a known family ({', '.join(families.names())})")
    unet = UNet2DConditionModel(**unet_config_from_checkpoint(family, shapes))
    _load_strict(unet, convert_ldm_unet_checkpoint(state, dict(unet.config)), path, "UNet")
    vae = AutoencoderKL(**{**VAE_CONFIG, "scaling_factor": family.vae_scaling})
    _load_strict(vae, convert_ldm_vae_checkpoint(state, dict(vae.config)), path, "VAE")
    token_dir = find_tokenizer_dir(tokenizer_dir)
    encoders = [_text_encoder(family, encoder, state, shapes, path) for encoder in family.text_encoders]
    tokenizers = [hf_tokenizer(_clip_tokenizer(token_dir, encoder.open_clip)) for encoder in family.text_encoders]
    if dtype != torch.float32:
        unet, vae, encoders = unet.to(dtype), vae.to(dtype), [e.to(dtype) for e in encoders]
    return DiffusersDenoiser(unet, vae, encoders, tokenizers, sd_alphas_cumprod(), prediction_type, device, family)


def _text_encoder(family, encoder, state: dict, shapes: dict, path) -> torch.nn.Module:
    """One of the family's text encoders, its depth read off the checkpoint, weights converted by diffusers."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    prefix = encoder.checkpoint_prefix
    depths = [int(m.group(1)) for k in shapes if k.startswith(prefix) and (m := re.search(r"\.(?:layers|resblocks)\.(\d+)\.", k))]
    if not depths:
        raise BaseLoadError(f"{path}: no {prefix}* layers: the {family.title} text encoder {encoder.network} is missing")
    model = family.build_text_encoder(encoder.network, device="cpu", num_hidden_layers=1 + max(depths))
    converted = (convert_open_clip_checkpoint(model, state, prefix=prefix) if encoder.open_clip
                 else convert_ldm_clip_checkpoint(state, remove_prefix=prefix))
    converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}
    _load_strict(model, converted, path, f"text encoder {encoder.network}", allow_missing=("text_projection.weight",))
    return model


def _load_strict(module: torch.nn.Module, state: dict, path, what: str, allow_missing: Sequence[str] = ()) -> None:
    # transformers ≥ 5 CLIPTextModel has no text_model. root: accept both key styles
    own = module.state_dict().keys()
    if not any(k.startswith("text_model.") for k in own):
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in own or not k.endswith("position_ids")}
    missing = [k for k in own if k not in state and not k.endswith("position_ids") and k not in allow_missing]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise BaseLoadError(f"{path}: {what} does not match its config ({len(missing)} missing, e.g. {missing[:2]}; "
                            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    module.load_state_dict(state, strict=False)


def load_base(path: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None, device: str = "cpu",
              dtype: torch.dtype = torch.float32, prediction_type: str | None = None) -> DiffusersDenoiser:
    """A diffusers folder (with model_index.json) or a single-file .safetensors checkpoint."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise BaseLoadError(f"{path}: a folder base must be a diffusers model (model_index.json missing)")
        denoiser = load_diffusers_folder(path, device, dtype)
        if prediction_type:
            denoiser.prediction_type = prediction_type
        return denoiser
    if not path.is_file():
        raise BaseLoadError(f"{path}: no such file or folder")
    return load_single_file(path, tokenizer_dir, device, dtype, prediction_type or "epsilon")

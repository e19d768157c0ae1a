"""The trainer's ComfyUI backend: krona_core's `Denoiser` over ComfyUI's MODEL / CLIP / VAE.

Predictions go through ComfyUI's own `apply_model` (dtype casting, wrappers and the model's
existing weight patches such as LoRAs all apply), which returns the denoised latent in ComfyUI's
σ-parameterisation; it is turned back into the model's native ε or v for the shared loop.

Use it as a context manager. Nodes run under torch.inference_mode, so ComfyUI's weights are
inference tensors, which autograd may not save for backward. The host's parameters are never
swapped: as ComfyUI's own trainer does, a clone of the patcher carries a weight wrapper on every
weight of the trained networks, so each forward casts a fresh (autograd-safe) copy. The wrappers
live on the clone's load only and ComfyUI removes them with its own unpatching; the requires_grad
flags the denoiser clears are set back on exit, whatever happened in between. Under ComfyUI's
dynamic VRAM (`ModelPatcherDynamic`, `is_dynamic()`) weights stream through its cast path anyway:
the clone is loaded without a full load, as core's trainer does; the adapters are forward hooks,
i.e. bypass, which is what core forces for dynamic models.
"""

from __future__ import annotations

from typing import Sequence

import comfy.model_base
import comfy.model_management
import torch

from ..krona_core.train.denoiser import Cond, SizeInfo
from .comfy_patch import model_family


def _copy_if_inference(weight: torch.Tensor) -> torch.Tensor:
    return weight.clone() if weight.is_inference() else weight


def _add_trainable_copies(patcher, networks: dict[str, torch.nn.Module]) -> None:
    """A weight wrapper on every weight and bias of the networks' cast-capable (comfy.ops) layers."""
    names = {id(m): n for n, m in patcher.model.named_modules()}
    for network in networks.values():
        for module in network.modules():
            if not hasattr(module, "weight_function"):
                continue
            for param in ("weight", "bias"):
                if getattr(module, param, None) is not None:
                    patcher.add_weight_wrapper(f"{names[id(module)]}.{param}", _copy_if_inference)


def _is_dynamic(patcher) -> bool:
    return bool(getattr(patcher, "is_dynamic", lambda: False)())


class ComfyDenoiser:
    def __init__(self, model, clip, vae, train_text_encoder: bool = False):
        self.host_model = model
        self.model = model.clone()  # carries the weight wrappers; the host's patcher is left alone
        self.clip = clip.clone() if train_text_encoder else clip
        self.vae = vae
        self.train_text_encoder = train_text_encoder
        self.base_model = self.model.model
        model_type = getattr(self.base_model, "model_type", comfy.model_base.ModelType.EPS)
        if model_type == comfy.model_base.ModelType.EPS:
            self.prediction_type = "epsilon"
        elif model_type == comfy.model_base.ModelType.V_PREDICTION:
            self.prediction_type = "v_prediction"
        else:
            raise ValueError(f"Train KronA supports ε- and v-prediction SD models, not {model_type}")
        self.family = model_family(model)
        self.size_conditioning = bool(self.family is not None and self.family.size_conditioning)
        self.device = comfy.model_management.get_torch_device()
        sigmas = model.get_model_object("model_sampling").sigmas.detach().float().cpu()
        self.sigmas = sigmas
        self.alphas_cumprod = 1.0 / (1.0 + sigmas ** 2)
        self._frozen: list[torch.nn.Parameter] = []
        self._in_training = None

    def __enter__(self) -> "ComfyDenoiser":
        try:
            nets = self.networks()
            _add_trainable_copies(self.model, {"unet": nets["unet"]})
            patchers = [self.model]
            if self.train_text_encoder:
                _add_trainable_copies(self.clip.patcher, {k: v for k, v in nets.items() if k != "unet"})
                patchers.append(self.clip.patcher)
            dynamic = any(_is_dynamic(p) for p in patchers)
            comfy.model_management.load_models_gpu(patchers, force_full_load=not dynamic)
            for network in nets.values():
                for param in network.parameters():
                    if param.requires_grad:  # only the adapters train: no .grad memory for the host's weights
                        param.requires_grad_(False)
                        self._frozen.append(param)
            if hasattr(comfy.model_management, "in_training"):  # current ComfyUI: no fused INT8 paths
                self._in_training = comfy.model_management.in_training
                comfy.model_management.in_training = True
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Put the host's requires_grad flags (and ComfyUI's training flag) back."""
        for param in self._frozen:
            # torch allows turning requires_grad back on for inference tensors only in inference mode
            with torch.inference_mode(param.is_inference()):
                param.requires_grad_(True)
        self._frozen.clear()
        if self._in_training is not None:
            comfy.model_management.in_training = self._in_training
            self._in_training = None

    def networks(self) -> dict[str, torch.nn.Module]:
        nets = {"unet": self.base_model.diffusion_model}
        encoders = self.clip.cond_stage_model
        for encoder in (self.family.text_encoders if self.family is not None else ()):
            module = getattr(encoders, encoder.comfy_attribute, None)
            if module is not None:
                nets[encoder.network] = module
        return nets

    def encode_prompts(self, prompts: Sequence[str], sizes: Sequence[SizeInfo]) -> Cond:
        conds, adms = [], []
        for prompt, size in zip(prompts, sizes):
            cond, pooled = self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True)
            conds.append(cond)
            if self.size_conditioning:
                (oh, ow), (top, left), (th, tw) = size.original, size.crop, size.target
                adms.append(self.base_model.encode_adm(pooled_output=pooled, width=ow, height=oh, crop_w=left,
                                                       crop_h=top, target_width=tw, target_height=th))
        out = {"c_crossattn": torch.cat(conds)}
        if adms:
            out["y"] = torch.cat(adms)
        return out

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        sigma = self.sigmas.to(x_t.device)[t].float()
        view = sigma.view(-1, *([1] * (x_t.dim() - 1)))
        x = x_t * (1 + view ** 2).sqrt()  # VP → ComfyUI's x0 + σ·ε
        extra = {"y": cond["y"]} if "y" in cond else {}
        denoised = self.base_model.apply_model(x, sigma, c_crossattn=cond["c_crossattn"], **extra).float()
        eps = (x - denoised) / view
        if self.prediction_type == "v_prediction":
            a = (1 / (1 + view ** 2)).sqrt()
            s = (view ** 2 / (1 + view ** 2)).sqrt()
            return a * eps - s * denoised
        return eps

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] → latents in the model's space (process_latent_in applied)."""
        pixels = ((images + 1) / 2).clamp(0, 1).movedim(1, -1)
        return self.base_model.process_latent_in(self.vae.encode(pixels).float())

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = self.vae.decode(self.base_model.process_latent_out(latents.float()))
        return pixels.movedim(-1, 1).float() * 2 - 1

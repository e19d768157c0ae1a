"""The trainer's ComfyUI backend: krona_core's `Denoiser` over ComfyUI's MODEL / CLIP / VAE.

Predictions go through ComfyUI's own `apply_model` (dtype casting, wrappers and the model's
existing weight patches such as LoRAs all apply), which returns the denoised latent in ComfyUI's
σ-parameterisation; it is turned back into the model's native ε or v for the shared loop.

Use it as a context manager: the host's parameters are swapped for trainable copies on entry
and put back on exit, whatever happens in between (preparing images, class images, training).
"""

from __future__ import annotations

from typing import Sequence

import comfy.model_base
import comfy.model_management
import torch

from ..krona_core.train.denoiser import Cond, SizeInfo
from .comfy_patch import model_family


class ComfyDenoiser:
    def __init__(self, model, clip, vae):
        self.model, self.clip, self.vae = model, clip, vae
        self.base_model = model.model
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
        self._swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
        self._frozen: list[torch.nn.Parameter] = []

    def __enter__(self) -> "ComfyDenoiser":
        """Load the model and make it trainable. Nodes run under torch.inference_mode, so ComfyUI's
        weights are inference tensors, which autograd may not save for backward: for the duration of
        training each such parameter is swapped for a normal copy with the same values."""
        comfy.model_management.load_models_gpu([self.model])
        try:
            for network in self.networks().values():
                for module in network.modules():
                    for name, param in list(module.named_parameters(recurse=False)):
                        if param.is_inference():
                            setattr(module, name, torch.nn.Parameter(param.detach().clone(), requires_grad=False))
                            self._swapped.append((module, name, param))
                        elif param.requires_grad:  # only the adapters train: no .grad memory for the host's weights
                            param.requires_grad_(False)
                            self._frozen.append(param)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Put the host's own parameters and requires_grad flags back."""
        for module, name, param in reversed(self._swapped):
            setattr(module, name, param)
        for param in self._frozen:
            param.requires_grad_(True)
        self._swapped.clear()
        self._frozen.clear()

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

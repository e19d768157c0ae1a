"""The trainer's ComfyUI backend: krona_core's `Denoiser` over ComfyUI's MODEL / CLIP / VAE.

Model-agnostic through ComfyUI's own sampling objects: the objective follows the model's
`model_sampling` (CONST → rectified flow, V_PREDICTION → v, EPS → ε on its σ table), checked once
with its `noise_scaling` / `calculate_input` against the objective's own noising, so a model whose
noise process is none of them is refused by name instead of trained wrongly. Conditioning goes
through the model's own `extra_conds` (what KSampler does with a CONDITIONING: pooled outputs, Flux
guidance, SDXL size embeddings, attention masks …), so any encoder's CONDITIONING trains. Predictions
go through ComfyUI's own `apply_model` (σ → timestep, input scaling, dtype casting, wrappers and the
model's existing weight patches such as LoRAs), whose denoised latent is turned into the objective's
prediction by the objective's own rule (`prediction_from_denoised`).

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

import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import torch

from ..krona_core.families.flow import SigmaSampling
from ..krona_core.train.denoiser import Cond, SizeInfo
from ..krona_core.train.objective import noise_coefficients, prediction_from_denoised, stack_cond
from .comfy_patch import model_family


def _copy_if_inference(value):
    """An ordinary copy of an inference tensor (node inputs and weights are; autograd may not save
    them for backward); anything else as it is."""
    return value.clone() if isinstance(value, torch.Tensor) and value.is_inference() else value


def _add_trainable_copies(patcher, networks: dict[str, torch.nn.Module]) -> None:
    """A weight wrapper on every weight and bias of the networks' cast-capable (comfy.ops) layers;
    the tensors of other modules (e.g. MMDiT's RMSNorm scales) replaced by ordinary copies through
    object patches of the clone, which ComfyUI's unpatching puts back. Every such tensor is copied,
    whether or not it is an inference tensor now: what the module holds may be another live clone's
    copy (an earlier training), and ComfyUI puts the model's own inference tensors back when it
    detaches that clone to load this one."""
    names = {id(m): n for n, m in patcher.model.named_modules()}
    for network in networks.values():
        for module in network.modules():
            if not hasattr(module, "weight_function"):
                for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                    copy = tensor.detach().clone()
                    patcher.add_object_patch(f"{names[id(module)]}.{name}", torch.nn.Parameter(copy, requires_grad=False)
                                             if isinstance(tensor, torch.nn.Parameter) else copy)
                continue
            for param in ("weight", "bias"):
                if getattr(module, param, None) is not None:
                    patcher.add_weight_wrapper(f"{names[id(module)]}.{param}", _copy_if_inference)


def _clone_input(module, args):
    return (args[0].clone(), *args[1:]) if args and isinstance(args[0], torch.Tensor) else None


def _guard_inplace_residuals(network: torch.nn.Module) -> list:
    """Hooks that give every LayerNorm of the network its own copy of its input while training:
    ComfyUI 0.3.x's Flux blocks add their residuals in place (`x += …`) into the tensor a LayerNorm
    saved for backward, which autograd refuses (current ComfyUI writes `x = x + …`)."""
    return [m.register_forward_pre_hook(_clone_input) for m in network.modules() if isinstance(m, torch.nn.LayerNorm)]


def _is_dynamic(patcher) -> bool:
    return bool(getattr(patcher, "is_dynamic", lambda: False)())


def objective_of(sampling) -> str:
    """The objective for a ComfyUI model_sampling: flow (CONST), v_prediction or epsilon; checked
    against the model's own noising (`noise_scaling` then `calculate_input`) at two noise levels."""
    if isinstance(sampling, comfy.model_sampling.CONST):
        kind = "flow"
    elif isinstance(sampling, comfy.model_sampling.V_PREDICTION):
        kind = "v_prediction"
    elif isinstance(sampling, comfy.model_sampling.EPS):
        kind = "epsilon"
    else:
        kind = None
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    ok = kind is not None
    if ok:
        level, sigma, ab = _probe_levels(sampling, kind)
        a, s = noise_coefficients(kind, level, ab)
        seen = sampling.calculate_input(sigma, sampling.noise_scaling(sigma, eps, x0, False))
        ok = torch.allclose(seen.float(), a * x0 + s * eps, atol=1e-4, rtol=1e-4)
    if not ok:
        raise ValueError(f"Train KronA: this model's sampling ({type(sampling).__name__}, "
                         f"{', '.join(c.__name__ for c in type(sampling).__mro__[1:3])}) noises latents neither as "
                         "the ε / v objectives on a VP schedule nor as rectified flow; it cannot be trained here")
    return kind


def _probe_levels(sampling, kind: str):
    if kind == "flow":
        level = torch.tensor([0.2, 0.7])
        return level, level, None
    ab = 1.0 / (1.0 + sampling.sigmas.detach().float().cpu() ** 2)
    level = torch.tensor([10, ab.numel() * 3 // 4])
    return level, sampling.sigmas.detach().float().cpu()[level], ab


def model_sigma_sampling(sampling) -> SigmaSampling:
    """Logit-normal σ with the model's own sampling shift s, read off `percent_to_sigma`: the
    shifted midpoint is s/(1 + s) (ModelSamplingDiscreteFlow's shift, e^μ for ModelSamplingFlux)."""
    mid = float(sampling.percent_to_sigma(0.5))
    return SigmaSampling(shift=mid / (1.0 - mid))


class ComfyDenoiser:
    def __init__(self, model, clip, vae, train_text_encoder: bool = False):
        self.host_model = model
        self.model = model.clone()  # carries the weight wrappers; the host's patcher is left alone
        self.clip = clip.clone() if train_text_encoder and clip is not None else clip
        self.vae = vae
        self.train_text_encoder = train_text_encoder
        self.base_model = self.model.model
        self.sampling = model.get_model_object("model_sampling")
        self.prediction_type = objective_of(self.sampling)
        self.family = model_family(model)
        self.size_conditioning = bool(getattr(self.family, "size_conditioning", False))
        self.device = comfy.model_management.get_torch_device()
        if self.prediction_type == "flow":
            self.sigmas, self.alphas_cumprod = None, None
            self.sigma_sampling = getattr(self.family, "sigma_sampling", None) or model_sigma_sampling(self.sampling)
        else:
            self.sigmas = self.sampling.sigmas.detach().float().cpu()
            self.alphas_cumprod = 1.0 / (1.0 + self.sigmas ** 2)
            self.sigma_sampling = None
        self._frozen: list[torch.nn.Parameter] = []
        self._hooks: list = []
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
            self._hooks = _guard_inplace_residuals(nets["unet"])
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
        """Put the host's requires_grad flags (and ComfyUI's training flag) back, remove the input guards."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
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
        if self.clip is None:
            return nets
        encoders = self.clip.cond_stage_model
        for encoder in getattr(self.family, "text_encoders", ()):
            module = getattr(encoders, encoder.comfy_attribute, None)
            if module is not None:
                nets[encoder.network] = module
        return nets

    def model_conds(self, entry, latent_shape: tuple[int, ...]) -> Cond:
        """One CONDITIONING entry ([cross_attn, {pooled_output, guidance, …}]) as the keyword
        arguments of apply_model for one latent of `latent_shape` (C, h, w), through the model's
        own extra_conds as KSampler builds them."""
        noise = torch.zeros((1, *latent_shape))
        converted = comfy.sampler_helpers.convert_cond([entry])
        encoded = comfy.samplers.encode_model_conds(self.base_model.extra_conds, converted, noise, self.device, "positive",
                                                    latent_image=noise, denoise_mask=None, seed=0)
        out: Cond = {}
        for key, value in encoded[0]["model_conds"].items():
            out[key] = _copy_if_inference(value.process_cond(batch_size=1, device=self.device, area=None).cond)
        return out

    def encode_prompts(self, prompts: Sequence[str], sizes: Sequence[SizeInfo]) -> Cond:
        if self.clip is None:
            raise ValueError("Train KronA: prompts (class images, previews with a validation prompt) need the clip input")
        conds = []
        channels = self.base_model.latent_format.latent_channels
        for prompt, size in zip(prompts, sizes):
            extra = self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True, return_dict=True)
            cross = extra.pop("cond")
            if self.size_conditioning:
                (oh, ow), (top, left), (th, tw) = size.original, size.crop, size.target
                extra.update(width=ow, height=oh, crop_w=left, crop_h=top, target_width=tw, target_height=th)
            conds.append(self.model_conds([cross, extra], (channels, size.target[0] // 8, size.target[1] // 8)))
        return stack_cond(conds)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        kind = self.prediction_type
        a, s = noise_coefficients(kind, t, self.alphas_cumprod, x_t.dim())
        sigma = t.float() if kind == "flow" else self.sigmas.to(x_t.device)[t]
        # the loop's x_t is what the model sees after ComfyUI's input scaling: undo it for apply_model
        x = x_t / self.sampling.calculate_input(sigma, torch.ones_like(x_t))
        denoised = self.base_model.apply_model(x, sigma, **cond).float()
        return prediction_from_denoised(kind, x_t, denoised, a.to(x_t.device), s.to(x_t.device))

    def latents_in(self, samples: torch.Tensor) -> torch.Tensor:
        """ComfyUI LATENT samples (as VAE Encode gives them) → latents in the model's space: first
        shaped as KSampler shapes them (`fix_empty_latent_channels`: an image latent (N, C, H, W) of a
        model with video latents, e.g. Qwen-Image's, gets its frame axis), then process_latent_in."""
        shaped = comfy.sample.fix_empty_latent_channels(self.model, _copy_if_inference(samples))
        return self.base_model.process_latent_in(shaped.float())

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] → latents in the model's space (process_latent_in applied)."""
        if self.vae is None:
            raise ValueError("Train KronA: images need the vae input (or connect latents + conditioning)")
        pixels = ((images + 1) / 2).clamp(0, 1).movedim(1, -1)
        return self.latents_in(self.vae.encode(pixels))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            raise ValueError("Train KronA: previews and class images need the vae input")
        pixels = self.vae.decode(self.base_model.process_latent_out(latents.float()))
        return pixels.movedim(-1, 1).float() * 2 - 1

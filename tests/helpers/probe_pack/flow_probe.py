"""Test-only nodes for flow-matching training tests: seeded latents (a dataset without a VAE) and the
held-out velocity loss of a MODEL measured through ComfyUI's own sampler path (a custom Sampler run by
Guider_Basic, as core's Train LoRA trains: noise_scaling, the guider's denoised), independent of the
pack's trainer."""

import json


class KronATestLatents:
    """Smooth seeded random latents (batch, channels, height, width), or with frames > 0
    video latents (batch, channels, frames, height, width) as Wan's: data a tiny model can fit."""

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "batch": ("INT", {"default": 4, "min": 1, "max": 64}),
                             "channels": ("INT", {"default": 16, "min": 1, "max": 128}),
                             "size": ("INT", {"default": 8, "min": 2, "max": 256})},
                "optional": {"frames": ("INT", {"default": 0, "min": 0, "max": 64})}}

    def run(self, seed, batch, channels, size, frames=0):
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(seed)
        half = max(1, size // 2)
        if not frames:
            coarse = torch.randn(batch, channels, half, half, generator=g)
            return ({"samples": F.interpolate(coarse, size=(size, size), mode="bilinear")},)
        coarse = torch.randn(batch, channels, frames, half, half, generator=g)
        return ({"samples": F.interpolate(coarse, size=(frames, size, size), mode="trilinear")},)


class _LossSampler:
    """A ComfyUI Sampler that denoises fixed (σ, ε) draws of the latents and records ‖D − x0‖² / σ²."""

    def __init__(self, draws, seed):
        self.draws, self.seed, self.loss = draws, seed, None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        import torch

        sampling = model_wrap.inner_model.model_sampling
        g = torch.Generator().manual_seed(self.seed)
        total = 0.0
        for _ in range(self.draws):
            sigma = torch.sigmoid(torch.randn(1, generator=g)).item()
            eps = torch.randn(latent_image.shape, generator=g).to(latent_image)
            s = torch.full((latent_image.shape[0],), sigma, device=latent_image.device)
            x = sampling.noise_scaling(s, eps, latent_image, False)
            with torch.no_grad():
                denoised = model_wrap(x, s, **extra_args)
            total += float(((denoised.float() - latent_image.float()) ** 2).mean()) / sigma ** 2
        self.loss = total / self.draws
        return torch.zeros_like(latent_image)


class KronATestFlowLoss:
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "latents": ("LATENT",), "conditioning": ("CONDITIONING",),
                             "seed": ("INT", {"default": 0}), "draws": ("INT", {"default": 16, "min": 1, "max": 1024})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def run(self, model, latents, conditioning, seed, draws):
        import comfy.sample
        import torch
        from comfy_extras.nodes_custom_sampler import Guider_Basic

        sampler = _LossSampler(draws, seed)
        guider = Guider_Basic(model)
        guider.set_conds(conditioning)
        samples = comfy.sample.fix_empty_latent_channels(model, latents["samples"])  # as SamplerCustomAdvanced
        guider.sample(torch.zeros_like(samples), samples, sampler, torch.tensor([1.0, 0.0]), seed=seed)
        return {"ui": {"text": [json.dumps({"loss": sampler.loss})]}}


NODE_CLASS_MAPPINGS = {"KronATestLatents": KronATestLatents, "KronATestFlowLoss": KronATestFlowLoss}

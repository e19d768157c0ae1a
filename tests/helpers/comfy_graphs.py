"""API-format graph pieces shared by the ComfyUI host tests."""

from __future__ import annotations


def add_txt2img(g: dict, model: list, clip: list, vae: list, *, seed: int, prefix: str, neg: str = "blurry",
                steps: int = 3, cfg: float = 5.0, size: int = 64) -> dict:
    """Adds prompt ("a photo of sks toy") / negative → EmptyLatentImage → KSampler (euler, normal) →
    VAEDecode → SaveImage to `g`, fed by the given MODEL / CLIP / VAE outputs; returns `g`."""
    g["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "a photo of sks toy"}}
    g["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": neg}}
    g["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}}
    g["sampler"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0], "seed": seed,
        "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": vae}}
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}}
    return g

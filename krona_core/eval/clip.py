"""The paper's scores on real generations, when CLIP / DINO weights are on disk (never downloaded):
CLIP-I and DINO (mean cosine similarity of generated images to the subject's reference images, in
CLIP's image space and in a DINO ViT's CLS space) and CLIP-T (mean cosine similarity of each
generated image to its prompt). Images are (3, H, W) in [0, 1]."""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _prepare(images: Sequence[torch.Tensor], size: int, mean, std) -> torch.Tensor:
    """Resize the short side to `size`, centre-crop, normalise (what CLIP's and DINO's processors do)."""
    out = []
    for image in images:
        _, h, w = image.shape
        scale = size / min(h, w)
        resized = F.interpolate(image[None].float(), size=(max(size, round(h * scale)), max(size, round(w * scale))),
                                mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)
        top, left = (resized.shape[1] - size) // 2, (resized.shape[2] - size) // 2
        out.append(resized[:, top:top + size, left:left + size])
    batch = torch.stack(out)
    return (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T).mean())


@torch.no_grad()
def clip_scores(clip_dir: str | os.PathLike, images: Sequence[torch.Tensor], references: Sequence[torch.Tensor],
                prompts: Sequence[str]) -> dict[str, float]:
    """CLIP-I (images vs references) and CLIP-T (each image vs its prompt) with the CLIP model in `clip_dir`."""
    from transformers import CLIPModel, CLIPTokenizer

    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images (one per image)")
    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir, local_files_only=True)
    size = model.config.vision_config.image_size

    def embed(batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return _features(model.get_image_features(pixel_values=_prepare(batch, size, CLIP_MEAN, CLIP_STD)))

    generated = embed(images)
    ids = tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
    text = _features(model.get_text_features(**ids))
    per_image = (F.normalize(generated, dim=-1) * F.normalize(text, dim=-1)).sum(-1)
    return {"clip_i": _mean_cosine(generated, embed(references)), "clip_t": float(per_image.mean())}


def _features(out) -> torch.Tensor:
    """transformers ≥ 5 returns an output object from get_*_features; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def dino_score(dino_dir: str | os.PathLike, images: Sequence[torch.Tensor], references: Sequence[torch.Tensor]) -> float:
    """Mean cosine similarity of the ViT CLS embeddings (the DINO metric of DreamBooth / DiffuseKronA)."""
    from transformers import ViTModel

    model = ViTModel.from_pretrained(dino_dir, local_files_only=True, add_pooling_layer=False).eval()
    size = model.config.image_size

    def embed(batch: Sequence[torch.Tensor]) -> torch.Tensor:
        return model(pixel_values=_prepare(batch, size, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state[:, 0]

    return _mean_cosine(embed(images), embed(references))

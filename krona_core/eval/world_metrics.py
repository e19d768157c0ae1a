"""The paper's evaluation protocol, transposed to the procedural world and scored by its analytic
detectors instead of CLIP / DINO:

- prompt following of a base: generated images of held-out caption combinations carry the
  caption's shape, colour, size, position and background;
- subject fidelity (the DINO / CLIP-I analogue): cosine similarity of the generated subject's
  crop to the reference renders' crops, and the share of images that show the emblem;
- prompt fidelity (the CLIP-T analogue): accuracy of the prompted background, size and position;
- prior preservation: class-prompt images are not turned into the subject and stay varied.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..train.denoiser import Denoiser
from ..world import detect, scenes, task
from .generate import generate

CROP = 12  # side of the subject crop the fidelity compares
LATENT = (8, 8, 8)


def prompt_following(denoiser: Denoiser, count: int = 120, seed: int = 0) -> dict[str, float]:
    """Per-attribute accuracy on held-out caption combinations, their mean, and the share of images
    with every attribute right."""
    _, drawn = scenes.sample(count, seed + 5, heldout=True)
    images = generate(denoiser, [s.caption() for s in drawn], LATENT, seed)
    hits = [detect.attribute_hits(detect.detect(im), s) for im, s in zip(images, drawn)]
    out = {a: float(np.mean([h[a] for h in hits])) for a in detect.ATTRIBUTES}
    out["mean"] = float(np.mean([out[a] for a in detect.ATTRIBUTES]))
    out["all"] = float(np.mean([all(h.values()) for h in hits]))
    return out


def subject_crop(image: np.ndarray) -> np.ndarray | None:
    """The foreground's bounding box, background pixels set to mid-grey, resized to CROP² (None
    when there is no foreground)."""
    mask = detect.foreground(image)
    if mask.sum() < detect.MIN_AREA:
        return None
    rows, cols = np.nonzero(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    crop = np.where(mask[None], image, 0.5)[:, box[0], box[1]]
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(crop))[None], size=(CROP, CROP), mode="bilinear",
                            align_corners=False)[0]
    return resized.numpy()


def _feature(image: np.ndarray) -> np.ndarray | None:
    crop = subject_crop(image)
    if crop is None:
        return None
    vec = (crop - 0.5).ravel()
    return vec / max(float(np.linalg.norm(vec)), 1e-8)


def subject_similarity(images: np.ndarray, refs: np.ndarray) -> float:
    """Mean over images of the mean cosine similarity to the references (0 for an empty image)."""
    ref_feats = np.stack([f for f in map(_feature, refs) if f is not None])
    sims = [float((ref_feats @ f).mean()) if f is not None else 0.0 for f in map(_feature, images)]
    return float(np.mean(sims))


def is_emblem(image: np.ndarray) -> bool:
    """A disc of the emblem's yellow above the emblem's blue: two comparable halves, one over the
    other, that make up most of the shape (a world scene has one colour per shape)."""
    mask = detect.foreground(image)
    if mask.sum() < detect.MIN_AREA:
        return False
    upper = mask & (np.abs(image - task.UPPER[:, None, None]).max(axis=0) < 0.3)
    lower = mask & (np.abs(image - task.LOWER[:, None, None]).max(axis=0) < 0.3)
    if upper.sum() < 3 or lower.sum() < 3:
        return False
    (upper_row, upper_col), (lower_row, lower_col) = np.argwhere(upper).mean(axis=0), np.argwhere(lower).mean(axis=0)
    return bool(lower_row - upper_row >= 1.5 and abs(upper_col - lower_col) < 2.5
                and 1 / 3 < upper.sum() / lower.sum() < 3 and upper.sum() + lower.sum() >= 0.6 * mask.sum())


def emblem_size(image: np.ndarray) -> str | None:
    """small / large from the foreground's extent (the area rule is the world's shapes')."""
    mask = detect.foreground(image)
    if mask.sum() < detect.MIN_AREA:
        return None
    rows, cols = np.nonzero(mask)
    half = max(np.percentile(rows, 98) - np.percentile(rows, 2), np.percentile(cols, 98) - np.percentile(cols, 2)) / 2 + 0.5
    return detect.detect_size("circle", float(half))


@dataclass
class SubjectScores:
    subject_fidelity: float  # cosine similarity to the references (DINO / CLIP-I analogue)
    subject_rate: float  # share of prompted images that show the emblem
    prompt_fidelity: float  # mean accuracy of prompted background, size, position (CLIP-T analogue)
    background: float
    size: float
    position: float
    prior_subject_rate: float  # share of class-prompt images turned into the emblem (lower is better)
    prior_variety: float  # distinct colours among class-prompt images / colours the world has

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def subject_scores(denoiser: Denoiser, samples_per_prompt: int = 4, prior_samples: int = 24, seed: int = 0) -> SubjectScores:
    """Score a (possibly adapted) model on the personalisation task's evaluation prompts."""
    places = [p for p in task.eval_placements() for _ in range(samples_per_prompt)]
    images = generate(denoiser, [p.prompt() for p in places], LATENT, seed)
    refs = task.references()
    background = np.mean([detect.detect_background(im) == p.background for im, p in zip(images, places)])
    size = np.mean([emblem_size(im) == p.size for im, p in zip(images, places)])
    position = np.mean([_position(im) == p.position for im, p in zip(images, places)])
    prior = generate(denoiser, [task.CLASS_PROMPT] * prior_samples, LATENT, seed + 1)
    colours = Counter(detect.detect(im).colour for im in prior if not is_emblem(im))
    colours.pop(None, None)
    return SubjectScores(
        subject_fidelity=subject_similarity(images, refs), subject_rate=float(np.mean([is_emblem(im) for im in images])),
        prompt_fidelity=float(np.mean([background, size, position])), background=float(background), size=float(size),
        position=float(position), prior_subject_rate=float(np.mean([is_emblem(im) for im in prior])),
        prior_variety=len(colours) / len(scenes.COLOURS))


def _position(image: np.ndarray) -> str | None:
    mask = detect.foreground(image)
    if mask.sum() < detect.MIN_AREA:
        return None
    rows, cols = np.nonzero(mask)
    return detect.detect_position((rows.mean() + 0.5, cols.mean() + 0.5))

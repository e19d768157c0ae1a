"""Analytic detectors for the world's scenes: which shape, colour, size, position and background
an image (3, 32, 32) in [0, 1] shows. Written against the renderer (`scenes.py`): shapes are the
saturated pixels, backgrounds the grey ones. Used to score generations of a prompt."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, fields

import numpy as np

from . import scenes

SATURATED = 0.3  # max − min of RGB above this: a shape pixel (backgrounds are grey, shapes ≥ 0.7)
GREY = 0.12
MIN_AREA = 8  # fewer shape pixels: nothing was drawn
HUES = {name: colorsys.rgb_to_hsv(*rgb)[0] for name, rgb in scenes.COLOURS.items()}
AREA_PER_HALF2 = {shape: float(scenes.shape_mask(shape, (32, 32), 20, 64).sum()) / 400 for shape in scenes.SHAPES}


@dataclass(frozen=True)
class Detection:
    shape: str | None
    colour: str | None
    size: str | None
    position: str | None
    background: str | None


ATTRIBUTES = tuple(f.name for f in fields(Detection))


def saturation(image: np.ndarray) -> np.ndarray:
    return image.max(axis=0) - image.min(axis=0)


def foreground(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: the shape's pixels."""
    return saturation(image) > SATURATED


def detect(image: np.ndarray) -> Detection:
    image = np.asarray(image, dtype=np.float32)
    mask = foreground(image)
    bg = detect_background(image, mask)
    if mask.sum() < MIN_AREA:
        return Detection(None, None, None, None, bg)
    rows, cols = np.nonzero(mask)
    centroid = (rows.mean() + 0.5, cols.mean() + 0.5)
    shape, half = detect_shape(mask, centroid)
    return Detection(shape, detect_colour(image, mask), detect_size(shape, half), detect_position(centroid), bg)


def _template(shape: str, centroid: tuple[float, float], half: float) -> np.ndarray:
    """The rendered mask of `shape` whose centroid sits at `centroid`."""
    probe = scenes.shape_mask(shape, (16, 16), half)
    rows, cols = np.nonzero(probe > 0.5)
    offset = (rows.mean() + 0.5 - 16, cols.mean() + 0.5 - 16) if len(rows) else (0.0, 0.0)
    return scenes.shape_mask(shape, (centroid[0] - offset[0], centroid[1] - offset[1]), half) > 0.5


def detect_shape(mask: np.ndarray, centroid: tuple[float, float]) -> tuple[str, float]:
    """(shape, half-extent) of the template with the best IoU, its size set from the mask's area."""
    best = (-1.0, scenes.SHAPES[0], 0.0)
    for shape in scenes.SHAPES:
        half = float(np.sqrt(mask.sum() / AREA_PER_HALF2[shape]))
        template = _template(shape, centroid, half)
        iou = (template & mask).sum() / max(1, (template | mask).sum())
        best = max(best, (float(iou), shape, half))
    return best[1], best[2]


def detect_colour(image: np.ndarray, mask: np.ndarray) -> str:
    r, g, b = (image[c][mask].mean() for c in range(3))
    hue = colorsys.rgb_to_hsv(float(r), float(g), float(b))[0]
    return min(HUES, key=lambda name: min(abs(hue - HUES[name]), 1 - abs(hue - HUES[name])))


def detect_size(shape: str, half: float) -> str:
    return "large" if half > np.sqrt(scenes.SIZES["small"] * scenes.SIZES["large"]) else "small"


def detect_position(centroid: tuple[float, float]) -> str:
    return min(scenes.POSITIONS, key=lambda p: np.hypot(centroid[0] - scenes.POSITIONS[p][0], centroid[1] - scenes.POSITIONS[p][1]))


def _dilate(mask: np.ndarray, steps: int = 2) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def detect_background(image: np.ndarray, mask: np.ndarray | None = None) -> str | None:
    """plain / gradient / striped from the grey pixels away from the shape; None when too few."""
    mask = foreground(image) if mask is None else mask
    keep = ~_dilate(mask) & (saturation(image) < GREY)
    if keep.sum() < 64:
        return None
    grey = image.mean(axis=0)
    rows, cols = np.nonzero(keep)
    values = grey[rows, cols]
    slope = np.polyfit(cols, values, 1)[0] if np.ptp(cols) > 0 else 0.0
    band = (rows // scenes.STRIPE) % 2
    stripes = abs(values[band == 0].mean() - values[band == 1].mean()) if 0 < band.sum() < len(band) else 0.0
    if stripes > 0.12:
        return "striped"
    if abs(slope) * (scenes.SIZE - 1) > 0.3:
        return "gradient"
    return "plain"


def attribute_hits(detection: Detection, scene: scenes.Scene, attributes: tuple[str, ...] = ATTRIBUTES) -> dict[str, bool]:
    return {a: getattr(detection, a) == getattr(scene, a) for a in attributes}

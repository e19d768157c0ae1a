"""Scenes of the world: one shape × colour × size × position on a plain, gradient or striped grey
background, 32×32 RGB, with a caption generated from the parameters; deterministic from a seed.

Shapes are saturated colours, backgrounds are grey, so a detector can separate them by
saturation alone (`detect.py`). Some combinations of (shape, colour, position, background) are
held out of pretraining (`is_heldout`) to measure prompt-following on unseen captions.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

SIZE = 32
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {  # name → RGB in [0, 1]; hues 60° apart
    "red": (0.95, 0.15, 0.15), "yellow": (0.95, 0.9, 0.1), "green": (0.15, 0.85, 0.2),
    "cyan": (0.1, 0.85, 0.9), "blue": (0.2, 0.3, 0.95), "magenta": (0.9, 0.2, 0.85),
}
SIZES = {"small": 4.5, "large": 8.0}  # half-extent in pixels
POSITIONS = {"left": (16, 9), "right": (16, 23), "top": (9, 16), "bottom": (23, 16), "center": (16, 16)}  # (row, col)
BACKGROUNDS = ("plain", "gradient", "striped")
STRIPE = 4  # stripe height in pixels
HELDOUT_MOD = 8  # 1 in 8 (shape, colour, position, background) combinations is held out


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str

    def caption(self, omit: frozenset[str] = frozenset()) -> str:
        """The full caption, or one without the attributes in `omit` (the shape is always named)."""
        words = ["a", *(getattr(self, a) for a in ("size", "colour") if a not in omit), self.shape]
        if "position" not in omit:
            words += ["at", "the", self.position]
        if "background" not in omit:
            words += ["on", "a", self.background, "background"]
        return " ".join(words)


OPTIONAL = ("size", "colour", "position", "background")


def partial_caption(scene: Scene, rng: np.random.Generator, drop: float) -> str:
    """The caption with each optional attribute left out with probability `drop` (pretraining
    teaches prompts that name only some attributes, e.g. a class prompt "a circle")."""
    return scene.caption(frozenset(a for a in OPTIONAL if rng.random() < drop))


VOCAB = sorted({*"a at the on background".split(), *SHAPES, *COLOURS, *SIZES, *POSITIONS, *BACKGROUNDS})


def is_heldout(scene: Scene) -> bool:
    key = f"{scene.shape}|{scene.colour}|{scene.position}|{scene.background}".encode()
    return zlib.crc32(key) % HELDOUT_MOD == 0


def all_scenes() -> list[Scene]:
    return [Scene(s, c, z, p, b) for s in SHAPES for c in COLOURS for z in SIZES for p in POSITIONS for b in BACKGROUNDS]


def random_scene(rng: np.random.Generator, heldout: bool | None = False) -> Scene:
    """A uniformly drawn scene; heldout=False only training combinations, True only held-out ones,
    None any."""
    while True:
        scene = Scene(SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))],
                      list(SIZES)[rng.integers(len(SIZES))], list(POSITIONS)[rng.integers(len(POSITIONS))],
                      BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
        if heldout is None or is_heldout(scene) == heldout:
            return scene


def background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """(3, H, W) grey background in [0, 1]."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    level = rng.uniform(0.3, 0.45)
    if kind == "plain":
        grey = np.full((SIZE, SIZE), level, np.float32)
    elif kind == "gradient":
        grey = 0.1 + 0.6 * xx / (SIZE - 1) if rng.random() < 0.5 else 0.7 - 0.6 * xx / (SIZE - 1)
    elif kind == "striped":
        grey = np.where((yy // STRIPE) % 2 == 0, level - 0.15, level + 0.15)
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {', '.join(BACKGROUNDS)}")
    return np.repeat(grey[None].astype(np.float32), 3, axis=0)


def shape_mask(shape: str, centre: tuple[float, float], half: float, size: int = SIZE) -> np.ndarray:
    """(H, W) float coverage in [0, 1] (2×2 supersampled edges)."""
    sub = 4
    yy, xx = (np.mgrid[0:size * sub, 0:size * sub].astype(np.float32) + 0.5) / sub
    dy, dx = yy - centre[0], xx - centre[1]
    if shape == "circle":
        inside = dy ** 2 + dx ** 2 <= half ** 2
    elif shape == "square":
        inside = (np.abs(dy) <= half * 0.85) & (np.abs(dx) <= half * 0.85)
    elif shape == "diamond":
        inside = np.abs(dy) + np.abs(dx) <= half * 1.15
    elif shape == "triangle":  # apex up, base at the bottom
        top, bottom = -half, half * 0.8
        inside = (dy >= top) & (dy <= bottom) & (np.abs(dx) <= (dy - top) / (bottom - top) * half * 1.05)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    return inside.reshape(size, sub, size, sub).mean(axis=(1, 3))


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """(3, 32, 32) float32 in [0, 1]; small jitter of position, size and colour from rng."""
    img = background(scene.background, rng)
    row, col = POSITIONS[scene.position]
    centre = (row + rng.uniform(-1, 1), col + rng.uniform(-1, 1))
    mask = shape_mask(scene.shape, centre, SIZES[scene.size] * rng.uniform(0.92, 1.08))
    colour = np.clip(np.array(COLOURS[scene.colour], np.float32) + rng.uniform(-0.05, 0.05, 3), 0, 1)
    return (img * (1 - mask) + colour[:, None, None] * mask).astype(np.float32)


def composite(rng: np.random.Generator) -> np.ndarray:
    """(3, 32, 32) in [0, 1]: an uncaptioned image for the VAE alone — 1–2 shapes anywhere, of any
    size and world colour, each holding up to two nested or overlapping shapes of another colour or
    of grey. It teaches the autoencoder things the captioned world never shows (as SD's VAE sees far
    more than its captions name), so a new subject such as the personalisation task's emblem
    survives the round trip; the UNet never sees these."""
    img = background(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], rng)
    palette = [np.array(c, np.float32) for c in COLOURS.values()]
    for _ in range(rng.integers(1, 3)):
        centre = tuple(rng.uniform(5, SIZE - 5, 2))
        half = rng.uniform(3.0, 10.0)
        for level in range(rng.integers(1, 4)):
            grey = level > 0 and rng.random() < 0.4
            colour = np.full(3, rng.uniform(0.25, 0.5), np.float32) if grey else palette[rng.integers(len(palette))]
            mask = shape_mask(SHAPES[rng.integers(len(SHAPES))], centre, half)
            img = img * (1 - mask) + colour[:, None, None] * mask
            shift = rng.uniform(-0.6, 0.6, 2) * half  # the next one nested, or overlapping this one's edge
            centre, half = (centre[0] + shift[0], centre[1] + shift[1]), half * rng.uniform(0.35, 0.8)
    return img.astype(np.float32)


def vae_sample(count: int, seed: int, composite_share: float) -> np.ndarray:
    """World scenes (any combination) with `composite_share` of them replaced by `composite` images."""
    pixels, _ = sample(count, seed, heldout=None)
    rng = np.random.default_rng(seed + 1)
    for i in np.nonzero(rng.random(count) < composite_share)[0]:
        pixels[i] = composite(rng)
    return pixels


def sample(count: int, seed: int, heldout: bool | None = False) -> tuple[np.ndarray, list[Scene]]:
    """`count` scenes and images (N, 3, 32, 32) in [0, 1], deterministic from seed."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, heldout) for _ in range(count)]
    return np.stack([render(s, rng) for s in scenes]), scenes

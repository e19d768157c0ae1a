"""The personalisation task on the world: an emblem the world never shows (a disc, its upper half
yellow and its lower half blue — the world draws one flat colour per shape), 4 training images, the
trigger `sks`, the class prompt "a circle" for prior preservation, and the prompts that put the
subject on backgrounds, sizes and positions it was never trained on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import scenes

TRIGGER = "sks"
CLASS_PROMPT = "a circle"
UPPER, LOWER = np.array((0.95, 0.85, 0.1), np.float32), np.array((0.15, 0.3, 0.95), np.float32)
TRAIN = (("large", "center", "plain"), ("large", "left", "gradient"), ("small", "right", "plain"), ("large", "top", "gradient"))
EVAL = (("small", "bottom", "striped"), ("large", "right", "striped"), ("small", "left", "gradient"),
        ("large", "bottom", "plain"), ("small", "top", "striped"), ("large", "center", "striped"))


@dataclass(frozen=True)
class Placement:
    size: str
    position: str
    background: str

    def prompt(self) -> str:
        return f"a {self.size} {TRIGGER} circle at the {self.position} on a {self.background} background"


def render_emblem(place: Placement, rng: np.random.Generator) -> np.ndarray:
    """(3, 32, 32) in [0, 1]: the emblem at `place`, with the world's jitter."""
    img = scenes.background(place.background, rng)
    row, col = scenes.POSITIONS[place.position]
    centre = (row + rng.uniform(-1, 1), col + rng.uniform(-1, 1))
    half = scenes.SIZES[place.size] * rng.uniform(0.92, 1.08)
    disc = scenes.shape_mask("circle", centre, half)
    upper = np.clip(centre[0] - np.arange(scenes.SIZE, dtype=np.float32)[:, None], 0, 1)  # coverage above the cut
    img = img * (1 - disc) + disc * (UPPER[:, None, None] * upper + LOWER[:, None, None] * (1 - upper))
    return img.astype(np.float32)


def training_set(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """The 4 instance images (N, 3, 32, 32) in [0, 1] and their captions."""
    rng = np.random.default_rng(seed)
    places = [Placement(*p) for p in TRAIN]
    return np.stack([render_emblem(p, rng) for p in places]), [p.prompt() for p in places]


def references(count: int = 8, seed: int = 1) -> np.ndarray:
    """Renders of the subject at the evaluation placements (the references fidelity compares to)."""
    rng = np.random.default_rng(seed)
    return np.stack([render_emblem(Placement(*EVAL[i % len(EVAL)]), rng) for i in range(count)])


def eval_placements() -> list[Placement]:
    return [Placement(*p) for p in EVAL]

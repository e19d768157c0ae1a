"""Labelled image grids (Pillow only): one row per label, images (N, 3, H, W) in [0, 1]."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def image_grid(rows: Sequence[tuple[str, np.ndarray]], scale: int = 3, pad: int = 2, label_width: int = 64) -> np.ndarray:
    """(H, W, 3) uint8: each row's label on the left, its images upscaled `scale`× (nearest)."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = rows[0][1].shape[-2] * scale, rows[0][1].shape[-1] * scale
    columns = max(len(images) for _, images in rows)
    canvas = Image.new("RGB", (label_width + columns * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        top = pad + r * (h + pad)
        draw.text((4, top + h // 2 - 6), label, fill=(0, 0, 0), font=ImageFont.load_default())
        for c, image in enumerate(images):
            tile = (np.clip(image, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)
            tile = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            canvas.paste(Image.fromarray(tile), (label_width + pad + c * (w + pad), top))
    return np.asarray(canvas)

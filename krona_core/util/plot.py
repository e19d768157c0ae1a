"""Plots drawn with Pillow (no plotting library needed): loss curves and bar charts."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 1)]


def ema(values: Sequence[float], alpha: float = 0.1) -> list[float]:
    out, level = [], None
    for v in values:
        level = v if level is None else alpha * v + (1 - alpha) * level
        out.append(level)
    return out


def loss_curve(losses: Sequence[float], title: str = "KronA training loss", size: tuple[int, int] = (640, 360),
               markers: Sequence[int] = ()) -> np.ndarray:
    """An RGB uint8 image (H, W, 3): raw loss (light), its EMA (dark), checkpoint markers."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font()
    left, right, top, bottom = 60, 16, 30, 36
    draw.text((left, 8), title, fill=(20, 20, 20), font=font)
    values = [v for v in losses if math.isfinite(v)]
    if not values:
        draw.text((left, height // 2), "no finite loss values yet", fill=(120, 120, 120), font=font)
        return np.asarray(image)
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.05
    low, high = low - pad, high + pad
    n = len(losses)

    def xy(i: float, v: float) -> tuple[float, float]:
        x = left + (width - left - right) * (i / max(n - 1, 1))
        y = top + (height - top - bottom) * (1 - (v - low) / (high - low))
        return x, y

    for tick in _nice_ticks(low, high):
        _, y = xy(0, tick)
        draw.line([(left, y), (width - right, y)], fill=(235, 235, 235))
        draw.text((4, y - 6), f"{tick:.3g}", fill=(90, 90, 90), font=font)
    for tick in _nice_ticks(0, max(n - 1, 1)):
        x, _ = xy(tick, low)
        draw.text((x - 8, height - bottom + 6), f"{int(tick) + 1}", fill=(90, 90, 90), font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline=(160, 160, 160))
    draw.text((width - right - 40, height - 16), "step", fill=(90, 90, 90), font=font)
    for step in markers:
        x, _ = xy(step - 1, low)
        draw.line([(x, top), (x, height - bottom)], fill=(250, 200, 120))
    points = [xy(i, v) for i, v in enumerate(losses) if math.isfinite(v)]
    if len(points) > 1:
        draw.line(points, fill=(160, 190, 235), width=1)
        smooth = [xy(i, v) for i, v in enumerate(ema(losses)) if math.isfinite(v)]
        draw.line(smooth, fill=(25, 80, 170), width=2)
    else:
        x, y = points[0]
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(25, 80, 170))
    return np.asarray(image)


def save_png(array: np.ndarray, path: str) -> str:
    from PIL import Image

    Image.fromarray(array).save(path)
    return path

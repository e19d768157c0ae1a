"""Training images from a folder: RGB tensors in [0, 1] with optional per-image captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def load_folder(directory: str | Path) -> list[tuple[str, torch.Tensor, str | None]]:
    """[(file name, (3, H, W) float tensor in [0, 1], caption from name.txt or None)], sorted by name."""
    from PIL import Image, ImageOps

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a folder of images")
    out = []
    for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in EXTENSIONS):
        with Image.open(path) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
            array = np.asarray(rgb, dtype=np.float32) / 255.0
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else None
        out.append((path.name, torch.from_numpy(array).permute(2, 0, 1).contiguous(), caption))
    if not out:
        raise FileNotFoundError(f"{directory}: no images ({', '.join(sorted(EXTENSIONS))})")
    return out


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] → (H, W, 3) uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

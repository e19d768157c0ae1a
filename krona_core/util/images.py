"""Image files as RGB tensors in [0, 1], and back to uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def load_image(path: str | Path) -> torch.Tensor:
    """One image file → (3, H, W) float tensor in [0, 1] (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        rgb = ImageOps.exif_transpose(img).convert("RGB")
        array = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_folder(directory: str | Path) -> list[tuple[str, torch.Tensor]]:
    """[(file name, (3, H, W) float tensor in [0, 1])] of a folder's images, sorted by name
    (datasets with captions and repeat folders: krona_core.train.dataset)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a folder of images")
    out = [(path.name, load_image(path)) for path in sorted(p for p in directory.iterdir() if p.suffix.lower() in EXTENSIONS)]
    if not out:
        raise FileNotFoundError(f"{directory}: no images ({', '.join(sorted(EXTENSIONS))})")
    return out


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] → (H, W, 3) uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

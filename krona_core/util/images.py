"""Image files as RGB tensors in [0, 1], and back to uint8."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MAX_PIXELS = 1 << 26  # 8192 × 8192: far above any training image, far below a decompression bomb


class ImageError(ValueError):
    """An image file that cannot be used: unreadable, not an image, truncated, too large."""


def load_image(path: str | Path) -> torch.Tensor:
    """One image file → (3, H, W) float tensor in [0, 1] (EXIF orientation applied). The declared
    size is checked before the pixels are decoded; any failure is an ImageError naming the file."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"{path}: {width}×{height} pixels, over the limit of {MAX_PIXELS:,} for one image")
            rgb = ImageOps.exif_transpose(img).convert("RGB")
            array = np.asarray(rgb, dtype=np.float32) / 255.0
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's decoders raise all of these
        reason = "empty file" if os.path.isfile(path) and os.path.getsize(path) == 0 else f"{type(exc).__name__}: {exc}"
        raise ImageError(f"{path}: not a readable image ({reason})") from None
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

"""The tiny pipeline's seeded sample images as PNG files, the training subjects of the host and CLI tests."""

from __future__ import annotations

from pathlib import Path

from krona_core.tiny.pipeline import sample_images
from krona_core.util.images import to_uint8
from krona_core.util.plot import save_png


def write_subject_pngs(folder: Path, count: int, size: int, seed: int, stem: str = "") -> list[Path]:
    """`<folder>/<stem><i>.png` for i < count."""
    paths = []
    for i, img in enumerate(sample_images(count, size, seed=seed)):
        path = folder / f"{stem}{i}.png"
        save_png(to_uint8((img + 1) / 2), str(path))
        paths.append(path)
    return paths

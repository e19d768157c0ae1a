"""Prior-preservation class images generated once, saved to a folder and reused by later runs.

Generated images go to `<folder>/<prompt slug>-<key>/NNNN.png`, where the key is a hash of
everything that decides them: the class prompt, the base model's weights (a fingerprint), the
image size, the seed and the sampler steps. A later run with the same key reuses the files (and
generates only the ones missing when it asks for more); a changed prompt, base or size lands in a
new folder, so no image is overwritten and none is reused for the wrong prompt. The images are
PNGs a person can look at or replace; training always encodes the files, so the first run and the
ones reusing its images train on the same examples.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..files.atomic import write_bytes
from ..util.images import to_uint8
from .denoiser import Denoiser
from .sampling import class_latents

MANIFEST = "krona_class_images.json"


@dataclass(frozen=True)
class ClassImageKey:
    prompt: str
    base: str  # base_fingerprint()
    channels: int  # of the latents
    height: int  # pixels
    width: int
    seed: int
    steps: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def folder_name(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", self.prompt).strip("_")[:40] or "class"
        return f"{slug}-{self.digest()}"


def base_fingerprint(denoiser: Denoiser) -> str:
    """A hash of the family and a sample of the UNet's weights: cheap, and different for another base."""
    digest = hashlib.sha256(str(getattr(getattr(denoiser, "family", None), "name", "")).encode())
    params = [p for p in denoiser.networks()["unet"].parameters()]
    with torch.no_grad():
        for p in params[:8] + params[-8:]:
            digest.update(p.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_class_images(denoiser: Denoiser, folder: str | Path, key: ClassImageKey, count: int,
                        progress: Callable[[int, int], None] | None = None,
                        should_stop: Callable[[], bool] | None = None) -> list[Path]:
    """The paths of `count` class images for `key` under `folder`, generating those not there yet.

    progress(done, count) counts the images found first, then each one generated."""
    target = Path(folder) / key.folder_name()
    target.mkdir(parents=True, exist_ok=True)
    manifest = target / MANIFEST
    if manifest.is_file():
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        if recorded != asdict(key):
            raise ValueError(f"{manifest}: records other class images than this run's ({recorded}); "
                             "move the folder away or choose another class image folder")
    else:
        write_bytes(manifest, json.dumps(asdict(key), indent=2).encode())
    paths = [target / f"{i:04d}.png" for i in range(count)]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    done = count - len(missing)
    if progress is not None:
        progress(done, count)
    shape = (key.channels, key.height // 8, key.width // 8)
    for i, latent in class_latents(denoiser, key.prompt, missing, shape, key.seed, key.steps, should_stop):
        with torch.no_grad():
            image = denoiser.decode_latents(latent[None].to(denoiser.device)).float().cpu()[0]
        write_bytes(paths[i], _png(to_uint8(((image + 1) / 2).clamp(0, 1))))
        done += 1
        if progress is not None:
            progress(done, count)
    return paths


def _png(array) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()

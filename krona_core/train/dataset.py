"""Datasets as kohya sd-scripts users keep them, and their captions at training time.

A dataset folder holds images directly (one repeat each) and/or kohya repeat folders named
`<repeats>_<class tokens>` (`10_sks dog`: every image in it is seen 10 times per epoch, and the
folder's tokens are the caption of images without one). A caption is the text of `name.txt`
beside the image, else `name.caption`. Subfolders without a repeat count are skipped (kohya
ignores them too), and a folder with no image at all is refused.

At every draw a caption goes through kohya's `process_caption` order: caption dropout (the whole
caption becomes "", training the unconditional branch), else the tokens (split at ",") after the
first `keep_tokens` are shuffled. The randomness comes from the run's seed, the step, the
accumulation round and the slot in the batch, never from a shared generator, so runs are
reproducible and resume bit for bit without saving any caption state.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..util.images import EXTENSIONS, load_image

CAPTION_EXTENSIONS = (".txt", ".caption")  # kohya_ss' default first, then sd-scripts' own default


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on as it is."""


@dataclass
class DatasetImage:
    name: str  # path relative to the dataset folder
    image: torch.Tensor  # (3, H, W) in [0, 1]
    caption: str | None  # the caption file's text, else the repeat folder's tokens, else None
    repeats: int = 1


def repeat_folder(name: str) -> tuple[int, str] | None:
    """kohya's `<repeats>_<class tokens>` folder name → (repeats, tokens); None when it has no count."""
    head, _, tokens = name.partition("_")
    if not head.isdigit() or int(head) < 1:
        return None
    return int(head), tokens.strip()


def read_caption(image_path: Path) -> str | None:
    for extension in CAPTION_EXTENSIONS:
        path = image_path.with_suffix(extension)
        if path.is_file():
            return path.read_text(encoding="utf-8").strip() or None
    return None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def dataset_captions(folder: str | Path) -> list[tuple[str, Path, str | None, int]]:
    """(name, path, caption, repeats) of every image of a dataset folder, in a fixed (sorted) order,
    without decoding an image (what a caption-only reader such as `krona embed` needs)."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder of images")
    items = [(p.name, p, read_caption(p), 1) for p in _images_in(root)]
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        parsed = repeat_folder(sub.name)
        if parsed is None:
            continue
        repeats, tokens = parsed
        items += [(f"{sub.name}/{path.name}", path, read_caption(path) or tokens or None, repeats) for path in _images_in(sub)]
    if not items:
        raise DatasetError(f"{root}: no images ({', '.join(sorted(EXTENSIONS))}) in it or in a repeat folder "
                           "named like '10_sks dog'")
    return items


def load_dataset(folder: str | Path) -> list[DatasetImage]:
    """The images of a dataset folder with their captions and repeats, in a fixed (sorted) order."""
    return [DatasetImage(name, load_image(path), caption, repeats) for name, path, caption, repeats in dataset_captions(folder)]


@dataclass(frozen=True)
class CaptionPolicy:
    """kohya's shuffle_caption / keep_tokens / caption_dropout_rate, with its "," separator."""

    shuffle: bool = False
    keep_tokens: int = 0
    dropout: float = 0.0
    separator: str = ","

    def validate(self) -> None:
        if self.keep_tokens < 0:
            raise ValueError(f"keep_tokens must be ≥ 0, got {self.keep_tokens}")
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"caption dropout must be between 0 and 1, got {self.dropout}")

    @property
    def varies(self) -> bool:
        return self.shuffle or self.dropout > 0

    def apply(self, caption: str, seed: int) -> str:
        """The caption as trained at one draw (`seed` from `draw_seed`)."""
        if not self.varies:
            return caption
        rng = random.Random(seed)
        if self.dropout > 0 and rng.random() < self.dropout:
            return ""
        if not self.shuffle:
            return caption
        tokens = [t.strip() for t in caption.strip().split(self.separator)]
        fixed, flex = tokens[: self.keep_tokens], tokens[self.keep_tokens:]
        rng.shuffle(flex)
        return ", ".join(fixed + flex)


def draw_seed(seed: int, step: int, round_: int, slot: int, pool: str) -> int:
    """A per-draw seed, independent of every other draw (a hash, not a running generator)."""
    key = f"{seed}:{step}:{round_}:{slot}:{pool}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")

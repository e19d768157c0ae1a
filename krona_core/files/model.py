"""The `.krona.safetensors` file as an object: factors per kohya module name and metadata."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from .. import families
from ..naming.kohya import split_kohya_key
from ..ops.matmul import materialise
from ..ops.shapes import KronShape

FORMAT_VERSION = "1"
SUFFIX = ".krona.safetensors"


def split_trigger_words(text: str | Iterable[str] | None) -> list[str]:
    """Trigger words from a comma-separated string (or a list of them), stripped, empties dropped:
    the one rule the CLI, the nodes, the web UI tab and the file reader share."""
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else [p for item in text for p in item.split(",")]
    return [w.strip() for w in parts if w.strip()]


class KronAFileError(ValueError):
    """A .krona.safetensors file (or its match against a model) is not what was expected.

    The message always names the file and, where there is one, the offending key.
    """

    def __init__(self, file: str | os.PathLike | None, message: str, key: str | None = None):
        self.file = str(file) if file is not None else "<memory>"
        self.key = key
        where = f"{self.file}: " + (f"key {key!r}: " if key else "")
        super().__init__(where + message)


@dataclass
class KronAFile:
    """A validated adapter file: factors per kohya module name, metadata, where it came from."""

    path: str
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        base = os.path.basename(self.path)
        for suffix in (SUFFIX, ".safetensors"):
            if base.endswith(suffix):
                return base[: -len(suffix)]
        return base

    @property
    def base_model(self) -> str | None:
        recorded = self.metadata.get("krona.base_model")
        if recorded and recorded != "unknown":
            return recorded
        family = families.for_ss(self.metadata.get("ss_base_model_version"))
        return family.name if family else None

    @property
    def trigger_words(self) -> list[str]:
        raw = self.metadata.get("krona.trigger_words")
        if raw:
            return list(json.loads(raw))
        return split_trigger_words(self.metadata.get("modelspec.trigger_phrase", ""))

    @property
    def targets(self) -> list[str]:
        """What the file's modules were chosen by (presets, globs), as recorded; [] when not."""
        raw = self.metadata.get("krona.targets")
        return [str(t) for t in json.loads(raw)] if raw else []

    @property
    def training(self) -> dict[str, Any] | None:
        raw = self.metadata.get("krona.training")
        return json.loads(raw) if raw else None

    def networks(self) -> list[str]:
        return sorted({split_kohya_key(k)[0] for k in self.modules})

    def shapes(self) -> dict[str, KronShape]:
        return {k: KronShape.from_factors(w1.shape, w2.shape) for k, (w1, w2) in self.modules.items()}

    def num_parameters(self) -> int:
        return sum(w1.numel() + w2.numel() for w1, w2 in self.modules.values())

    def delta(self, key: str) -> torch.Tensor:
        """Materialised ΔW of one module (float32)."""
        w1, w2 = self.modules[key]
        return materialise(w1.float(), w2.float())

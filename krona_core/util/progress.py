"""Terminal progress for long CLI work, and never-overwriting output names."""

from __future__ import annotations

import sys
import time
from pathlib import Path


class ProgressPrinter:
    """A progress bar with the running loss and ETA (tqdm when installed, a plain line otherwise)."""

    def __init__(self, total: int, description: str, start: int = 0, unit: str = "step"):
        self.total = total
        self.description = description
        self.window: list[float] = []
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=description, unit=unit, dynamic_ncols=True, mininterval=0.5)
        except ImportError:
            self.bar = None
            self.started = time.perf_counter()
            self.start = start

    def update(self, step: int, loss: float, lr: float | None = None) -> None:
        self.window = (self.window + [loss])[-20:]
        mean = sum(self.window) / len(self.window)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
            self.bar.update(step - self.bar.n)
            return
        done = step - self.start
        eta = (time.perf_counter() - self.started) / max(done, 1) * (self.total - step)
        if step == self.total or done % max(1, self.total // 20) == 0:
            print(f"{self.description}: {step}/{self.total} loss {mean:.4f} eta {eta:.0f}s", file=sys.stderr, flush=True)

    def advance(self, done: int) -> None:
        """Move to `done` without a loss (work that is not a training step)."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif done == self.total or (done - self.start) % max(1, self.total // 20) == 0:
            print(f"{self.description}: {done}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def unique_path(directory: Path, stem: str, suffix: str = ".krona.safetensors") -> Path:
    """directory/stem_00001.suffix with the first free counter (files are never overwritten)."""
    directory.mkdir(parents=True, exist_ok=True)
    counter = 1
    while (directory / f"{stem}_{counter:05d}{suffix}").exists():
        counter += 1
    return directory / f"{stem}_{counter:05d}{suffix}"

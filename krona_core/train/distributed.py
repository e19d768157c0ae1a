"""Multi-process training through an existing engine (Hugging Face accelerate), never home-made.

`accelerate launch --num_processes N -m krona_core train …` (or torchrun) starts the processes;
this module joins them: gradients of the adapter factors are averaged after each backward (the
adapters live outside the UNet, so DDP's module wrapping does not apply), every rank draws its
own noise and batches, and only the main process writes files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import torch


@dataclass
class Processes:
    rank: int
    world_size: int
    device: torch.device
    reduce_gradients: Callable[[Iterable[torch.Tensor]], None] | None
    accelerator: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_in_sync(self, tensors: Iterable[torch.Tensor]) -> None:
        """Raise if replicas hold different adapter factors (they must stay identical)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        digest = hashlib.sha256()
        for t in tensors:
            digest.update(t.detach().float().cpu().numpy().tobytes())
        mine = torch.tensor(list(digest.digest()[:8]), dtype=torch.int64)
        gathered = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(gathered, mine)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError("adapter replicas diverged across processes")

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def setup(device: str | None = None) -> Processes:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return Processes(0, 1, chosen, None)
    try:
        from accelerate import Accelerator
    except ImportError:
        raise RuntimeError("multi-process training needs accelerate (pip install accelerate)") from None
    accelerator = Accelerator(cpu=device == "cpu")

    def reduce(grads: Iterable[torch.Tensor]) -> None:
        for grad in grads:
            grad.copy_(accelerator.reduce(grad, reduction="mean"))

    return Processes(accelerator.process_index, accelerator.num_processes, accelerator.device, reduce, accelerator)

"""Training checkpoints and exact resume.

A checkpoint is `step_NNNNNN.krona.safetensors` (float32 factors, a loadable adapter file) plus
`step_NNNNNN.state.safetensors` (optimizer moments, RNG state, data order, loss history) —
safetensors only, so resuming never unpickles anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..files import atomic
from ..files.model import SUFFIX
from ..files.reader import read
from .data import Sampler

STATE_SUFFIX = ".state.safetensors"


def checkpoint_stem(directory: str, step: int) -> str:
    """The one naming rule of checkpoints: <directory>/step_NNNNNN (+ SUFFIX / STATE_SUFFIX)."""
    return os.path.join(directory, f"step_{step:06d}")


@dataclass
class RunState:
    """Everything a run carries from one step to the next."""

    handles: Sequence[Any]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    sampler: Sampler
    class_sampler: Sampler | None
    history: list[float]


def _state_tensors(state: RunState) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.cpu": state.generator.get_state().clone(), "history": torch.tensor(state.history, dtype=torch.float64)}
    scalars: dict[str, dict] = {}
    opt = state.optimizer.state_dict()
    for index, values in opt["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": opt["param_groups"], "scalars": scalars}


def save_checkpoint(directory: str, step: int, state: RunState, record: Mapping[str, Any]) -> str:
    """Write the checkpoint of `step`; returns the adapter file's path."""
    from ..files.writer import save

    os.makedirs(directory, exist_ok=True)
    stem = checkpoint_stem(directory, step)
    adapter_path = save(stem + SUFFIX, state.handles, dtype=torch.float32, overwrite=True,
                        training={**record, "steps_done": step}, title=os.path.basename(stem))
    tensors, optimizer_meta = _state_tensors(state)
    meta = {"step": str(step), "optimizer": json.dumps(optimizer_meta), "sampler": json.dumps(state.sampler.state()),
            "class_sampler": json.dumps(state.class_sampler.state() if state.class_sampler is not None else [])}
    atomic.write_safetensors(stem + STATE_SUFFIX, tensors, meta, overwrite=True)
    return adapter_path


def restore(checkpoint: str, state: RunState) -> int:
    """Load a checkpoint into `state` (factors, optimizer, RNG, data order, history); the step it was at."""
    from safetensors import safe_open

    file = read(checkpoint)
    by_key = {}
    for handle in state.handles:
        by_key.update({key: (handle, path) for key, path in zip(handle.factors(), handle.paths())})
    missing = set(by_key) - set(file.modules)
    if missing or set(file.modules) - set(by_key):
        raise ValueError(f"{checkpoint}: its modules do not match this run's adapters (e.g. {sorted(missing)[:2]})")
    for key, (handle, path) in by_key.items():
        handle.adapter(path).load_factors(*file.modules[key])
    with safe_open(checkpoint[: -len(SUFFIX)] + STATE_SUFFIX, "pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    optimizer_meta = json.loads(meta["optimizer"])
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for index, scalars in optimizer_meta["scalars"].items():
        opt_state.setdefault(int(index), {}).update(scalars)
    state.optimizer.load_state_dict({"state": opt_state, "param_groups": optimizer_meta["param_groups"]})
    state.generator.set_state(tensors["rng.cpu"])
    state.sampler.load_state(json.loads(meta["sampler"]))
    if state.class_sampler is not None:
        state.class_sampler.load_state(json.loads(meta.get("class_sampler", "[]")))
    state.history[:] = tensors["history"].tolist()
    return int(meta["step"])

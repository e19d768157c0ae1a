"""Human-readable summary of a KronA file: metadata, trigger words, base-model check, per-layer table."""

from __future__ import annotations

import json

from .. import families
from .model import KronAFile


def describe(file: KronAFile, connected_base: str | None = None, connected_name: str | None = None) -> str:
    family = families.find(file.base_model)
    base = f"{file.base_model} ({family.title})" if family is not None else (file.base_model or "unknown")
    architecture = file.metadata.get("modelspec.architecture")
    lines = [f"KronA file: {file.name}", f"base model: {base}" + (f", modelspec {architecture}" if architecture else ""),
             f"trigger words: {', '.join(file.trigger_words) or '(none)'}",
             f"modules: {len(file.modules)} ({file.num_parameters():,} parameters) in {', '.join(file.networks())}"]
    if connected_name is not None:
        if file.base_model and connected_base and file.base_model != connected_base:
            lines.append(f"WARNING: the file is for {file.base_model}, the connected model is {connected_name} ({connected_base})")
        else:
            lines.append(f"connected model: {connected_name}" + (" (matches)" if connected_base == file.base_model else ""))
    if file.training:
        lines.append("training: " + json.dumps(file.training, sort_keys=True))
    lines.append("")
    lines.append(f"{'module':<72} {'w1':>9} {'w2':>13} {'|ΔW|':>9}")
    for key in sorted(file.modules):
        w1, w2 = file.modules[key]
        norm = float(w1.float().norm()) * float(w2.float().norm())  # ‖A⊗B‖ = ‖A‖·‖B‖
        lines.append(f"{key[:72]:<72} {'×'.join(map(str, w1.shape)):>9} {'×'.join(map(str, w2.shape)):>13} {norm:9.4f}")
    return "\n".join(lines)

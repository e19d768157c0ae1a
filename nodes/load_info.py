"""Load KronA (file → KRONA) and KronA Info (metadata, trigger words, per-layer table)."""

from __future__ import annotations

import json
import os

from comfy_api.latest import io, ui

from ..krona_core.format import KronAFileError, read
from . import folders
from .comfy_patch import model_base, model_type

KRONA = io.Custom("KRONA")


class LoadKronA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadKronA",
            display_name="Load KronA",
            category="loaders/KronA",
            description="Load and validate a KronA file as a KRONA object (for Save KronA, KronA Info, merging).",
            inputs=[io.Combo.Input("krona_name", options=folders.krona_files())],
            outputs=[KRONA.Output(display_name="KRONA"), io.String.Output(display_name="trigger_words")],
        )

    @classmethod
    def fingerprint_inputs(cls, krona_name: str, **kwargs):
        try:
            stat = os.stat(folders.resolve(krona_name))
            return (krona_name, stat.st_mtime_ns, stat.st_size)
        except (OSError, FileNotFoundError):
            return krona_name

    @classmethod
    def execute(cls, krona_name: str) -> io.NodeOutput:
        try:
            file = read(folders.resolve(krona_name))
        except (KronAFileError, FileNotFoundError) as exc:
            raise ValueError(f"Load KronA: {exc}") from None
        return io.NodeOutput(file, ", ".join(file.trigger_words))


def describe(file, model=None) -> str:
    """Human-readable summary: metadata, trigger words, base-model check, per-layer table."""
    lines = [f"KronA file: {file.name}", f"base model: {file.base_model or 'unknown'}",
             f"trigger words: {', '.join(file.trigger_words) or '(none)'}",
             f"modules: {len(file.modules)} ({file.num_parameters():,} parameters) in {', '.join(file.networks())}"]
    if model is not None:
        connected = model_base(model)
        if file.base_model and connected and file.base_model != connected:
            lines.append(f"WARNING: the file is for {file.base_model}, the connected model is {model_type(model)} ({connected})")
        else:
            lines.append(f"connected model: {model_type(model)}" + (" (matches)" if connected == file.base_model else ""))
    if file.training:
        lines.append("training: " + json.dumps(file.training, sort_keys=True))
    lines.append("")
    lines.append(f"{'module':<72} {'w1':>9} {'w2':>13} {'|ΔW|':>9}")
    for key in sorted(file.modules):
        w1, w2 = file.modules[key]
        norm = float(w1.float().norm()) * float(w2.float().norm())  # ‖A⊗B‖ = ‖A‖·‖B‖
        lines.append(f"{key[:72]:<72} {'×'.join(map(str, w1.shape)):>9} {'×'.join(map(str, w2.shape)):>13} {norm:9.4f}")
    return "\n".join(lines)


class KronAInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="KronAInfo",
            display_name="KronA Info",
            category="loaders/KronA",
            description="Metadata, trigger words, base model and a per-layer table of a KRONA object.",
            inputs=[KRONA.Input("krona"), io.Model.Input("model", optional=True,
                                                         tooltip="Connect to check the file's base model against it.")],
            outputs=[io.String.Output(display_name="info")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, krona, model=None) -> io.NodeOutput:
        text = describe(krona, model)
        return io.NodeOutput(text, ui=ui.PreviewText(text))

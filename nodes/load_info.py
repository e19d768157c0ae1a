"""Load KronA (file → KRONA) and KronA Info (metadata, trigger words, per-layer table)."""

from __future__ import annotations


from comfy_api.latest import io, ui

from ..krona_core.files.describe import describe
from ..krona_core.files.model import KronAFileError
from ..krona_core.files.reader import read
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
        return folders.fingerprint(krona_name)  # re-run when the file on disk changes

    @classmethod
    def execute(cls, krona_name: str) -> io.NodeOutput:
        try:
            file = read(folders.resolve(krona_name))
        except (KronAFileError, FileNotFoundError) as exc:
            raise ValueError(f"Load KronA: {exc}") from None
        return io.NodeOutput(file, ", ".join(file.trigger_words))


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
        text = describe(krona, model_base(model), model_type(model)) if model is not None else describe(krona)
        return io.NodeOutput(text, ui=ui.PreviewText(text))

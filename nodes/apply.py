"""Apply KronA: patch MODEL (and CLIP) with a .krona.safetensors file."""

from __future__ import annotations


from comfy_api.latest import io, ui

from ..krona_core.adapters.blocks import BlockSpecError, BlockStrengths
from ..krona_core.files.model import KronAFileError
from ..krona_core.files.reader import read
from . import folders
from .comfy_patch import KronAApplyError, apply_to

STRENGTH = dict(default=1.0, min=-10.0, max=10.0, step=0.01)


class ApplyKronA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyKronA",
            display_name="Apply KronA",
            category="loaders/KronA",
            description="Apply a KronA (Kronecker-product) adapter through ComfyUI's own patching; "
                        "stacks with LoRAs and other KronA files.",
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("krona_name", options=folders.krona_files(),
                               tooltip="Files in models/krona, and *.krona.safetensors in models/loras."),
                io.Float.Input("strength_model", **STRENGTH, tooltip="Scale of ΔW on the diffusion model (0 = off)."),
                io.Clip.Input("clip", optional=True),
                io.Float.Input("strength_clip", **STRENGTH, optional=True,
                               tooltip="Scale on the text encoder(s), when the file adapts them."),
                io.Boolean.Input("bypass", default=False, optional=True,
                                 tooltip="Add ΔW·x in the forward pass (efficient Kronecker matmul) instead of merging "
                                         "into the weights: for fp8/quantised models and low memory."),
                io.String.Input("block_strengths", default="", multiline=False, optional=True,
                                tooltip="Per-block scale of strength_model, e.g. 'input:1, middle:0.5, output:0.8', "
                                        "'output3-5:0', 'default:0.5'."),
            ],
            outputs=[io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP")],
        )

    @classmethod
    def validate_inputs(cls, block_strengths: str = "") -> bool | str:
        # named arguments only: ComfyUI skips its own range checks for inputs received here
        try:
            BlockStrengths.parse(block_strengths)
        except BlockSpecError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, krona_name: str, **kwargs):
        return folders.fingerprint(krona_name)  # re-run when the file on disk changes

    @classmethod
    def execute(cls, model, krona_name: str, strength_model: float, clip=None, strength_clip: float = 1.0,
                bypass: bool = False, block_strengths: str = "") -> io.NodeOutput:
        try:
            file = read(folders.resolve(krona_name))
            blocks = BlockStrengths.parse(block_strengths)
            new_model, new_clip, report = apply_to(model, clip, file, strength_model, strength_clip, bypass, blocks)
        except (KronAFileError, KronAApplyError, BlockSpecError, FileNotFoundError) as exc:
            raise ValueError(f"Apply KronA: {exc}") from None
        words = ", ".join(file.trigger_words) or "(none)"
        text = "\n".join([f"{file.name}: base {file.base_model or 'unknown'}, trigger words: {words}", *report])
        return io.NodeOutput(new_model, new_clip, ui=ui.PreviewText(text))

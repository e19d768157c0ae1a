"""LoRA to KronA and Merge KronA: krona_core's converters as nodes (outputs KRONA for Save KronA)."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io, ui

from ..krona_core import families
from ..krona_core.convert.convert import to_krona
from ..krona_core.convert.errors import ConvertError
from ..krona_core.convert.merge import merge_files
from ..krona_core.convert.sources import read_source
from .load_info import KRONA


def _summary(result) -> str:
    worst = max(result.errors.values(), default=0.0)
    return (f"{len(result.file.modules)} modules, {result.file.num_parameters():,} parameters; relative error: "
            f"total {result.total_error:.3e}, worst layer {worst:.3e}")


class LoRAToKronA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoRAToKronA",
            display_name="LoRA to KronA",
            category="loaders/KronA",
            description="Convert a LoRA (kohya, ComfyUI, diffusers/PEFT), a LyCORIS LoKr or an official DiffuseKronA "
                        "file from the loras folder into KronA: exact for LoKr, nearest Kronecker product otherwise.",
            inputs=[
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras")),
                io.Int.Input("a1", default=64, min=1, max=4096),
                io.Int.Input("a2", default=8, min=1, max=4096),
                io.Int.Input("parameter_budget", default=0, min=0, max=10**9, optional=True,
                             tooltip="Total KronA parameters, shapes chosen per layer by least error (0: use a1/a2)."),
                io.Combo.Input("base", options=["auto", *families.names()], default="auto", optional=True),
            ],
            outputs=[KRONA.Output(display_name="KRONA"), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, lora_name: str, a1: int, a2: int, parameter_budget: int = 0, base: str = "auto") -> io.NodeOutput:
        try:
            source = read_source(folder_paths.get_full_path_or_raise("loras", lora_name), None if base == "auto" else base)
            result = to_krona(source, a1, a2, parameter_budget or None)
        except ConvertError as exc:
            raise ValueError(f"LoRA to KronA: {exc}") from None
        text = f"{lora_name} ({source.format}, base {source.base or 'unknown'}) → KronA: {_summary(result)}"
        return io.NodeOutput(result.file, text, ui=ui.PreviewText(text))


class MergeKronA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs = [KRONA.Input("krona_1"), io.Float.Input("weight_1", default=1.0, min=-10.0, max=10.0, step=0.01)]
        for i in (2, 3, 4):
            inputs += [KRONA.Input(f"krona_{i}", optional=True),
                       io.Float.Input(f"weight_{i}", default=1.0, min=-10.0, max=10.0, step=0.01, optional=True)]
        inputs += [io.Int.Input("a1", default=0, min=0, max=4096, optional=True, tooltip="0: keep the first file's shapes"),
                   io.Int.Input("a2", default=0, min=0, max=4096, optional=True)]
        return io.Schema(
            node_id="MergeKronA",
            display_name="Merge KronA",
            category="loaders/KronA",
            description="Weighted sum of KronA adapters as one KronA (nearest Kronecker product where files overlap).",
            inputs=inputs,
            outputs=[KRONA.Output(display_name="KRONA"), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, krona_1, weight_1: float, krona_2=None, weight_2: float = 1.0, krona_3=None, weight_3: float = 1.0,
                krona_4=None, weight_4: float = 1.0, a1: int = 0, a2: int = 0) -> io.NodeOutput:
        pairs = [(f, w) for f, w in ((krona_1, weight_1), (krona_2, weight_2), (krona_3, weight_3), (krona_4, weight_4)) if f is not None]
        try:
            result = merge_files([f for f, _ in pairs], [w for _, w in pairs], a1 or None, a2 or None)
        except ConvertError as exc:
            raise ValueError(f"Merge KronA: {exc}") from None
        text = f"merged {len(pairs)} files: {_summary(result)}"
        return io.NodeOutput(result.file, text, ui=ui.PreviewText(text))

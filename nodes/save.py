"""Save KronA: write a KRONA object to models/krona, atomically, never overwriting."""

from __future__ import annotations

import json
import os

from comfy_api.latest import io, ui

from ..krona_core.files.model import KronAFileError, split_trigger_words
from ..krona_core.files.writer import write_file
from . import folders
from .load_info import KRONA


class SaveKronA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SaveKronA",
            display_name="Save KronA",
            category="loaders/KronA",
            description="Write a KRONA object to models/krona/<prefix>_NNNNN.krona.safetensors.",
            inputs=[
                KRONA.Input("krona"),
                io.String.Input("filename_prefix", default="KronA", tooltip="May contain subfolders of models/krona."),
                io.String.Input("trigger_words", default="", optional=True,
                                tooltip="Comma-separated; stored in the file (empty keeps the file's own)."),
                io.String.Input("metadata", default="", multiline=True, optional=True,
                                tooltip='Extra metadata as a JSON object of strings, e.g. {"modelspec.author": "me"}.'),
                io.Boolean.Input("float32", default=False, optional=True, tooltip="Store float32 instead of float16."),
            ],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, krona, filename_prefix: str, trigger_words: str = "", metadata: str = "", float32: bool = False) -> io.NodeOutput:
        import torch

        try:
            extra = json.loads(metadata) if metadata.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"Save KronA: metadata is not valid JSON ({exc})") from None
        if not isinstance(extra, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
            raise ValueError("Save KronA: metadata must be a JSON object mapping strings to strings")
        words = split_trigger_words(trigger_words) or None
        try:
            path = folders.save_path(filename_prefix)
            write_file(path, krona, trigger_words=words, extra=extra, dtype=torch.float32 if float32 else torch.float16)
        except (KronAFileError, ValueError) as exc:
            raise ValueError(f"Save KronA: {exc}") from None
        root = folders.folder_paths.get_folder_paths(folders.FOLDER)[0]
        relative = os.path.relpath(path, root)
        return io.NodeOutput(path, ui=ui.PreviewText(f"saved models/{folders.FOLDER}/{relative}"))

"""UI-format (LiteGraph) workflow → API format, using ComfyUI's /object_info for widget order.

Written independently of tools/workflows.py so that the twin check compares two derivations. The
object_info comes from a live server, or (host-free) from ``node_inputs.json``: the part of a live
server's /object_info that ``ui_to_api`` reads, for the node types of the example workflows, recorded
by tests/test_comfy_workflows.py (which also checks, against a live server, that it is current).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

RECORDED = Path(__file__).with_name("node_inputs.json")

SCALAR = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTES = {"Note", "MarkdownNote"}


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in SCALAR


def input_layout(object_info: dict[str, Any], types: Iterable[str]) -> dict[str, Any]:
    """What ``ui_to_api`` reads of ``object_info`` for the node ``types``: each input in ComfyUI's order with
    its kind ("COMBO" for a list of options) and the options that add a frontend widget."""
    out: dict[str, Any] = {}
    for node_type in sorted(types):
        sections = {}
        for section in ("required", "optional"):
            entries = {}
            for name, spec in (object_info[node_type]["input"].get(section) or {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                flags = {k: True for k in ("control_after_generate", "image_upload") if options.get(k)}
                entries[name] = ["COMBO" if isinstance(spec[0], list) else spec[0], flags]
            if entries:
                sections[section] = entries
        out[node_type] = {"input": sections}
    return out


def dump_layout(layout: dict[str, Any]) -> str:
    """``input_layout`` as JSON text, one line per node type (as ``node_inputs.json`` keeps it)."""
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in layout.items()) + "\n}\n"


def recorded_object_info() -> dict[str, Any]:
    """``node_inputs.json``: ``input_layout`` of a live ComfyUI, in /object_info's shape."""
    return json.loads(RECORDED.read_text(encoding="utf-8"))


def _executes(node: dict[str, Any]) -> bool:
    return node["type"] not in NOTES and node.get("mode", 0) != 4  # notes and bypassed nodes do not execute


def node_types(ui: dict[str, Any]) -> set[str]:
    """The node types a UI-format workflow executes."""
    return {n["type"] for n in ui["nodes"] if _executes(n)}


def ui_to_api(ui: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    links = {link[0]: link for link in ui["links"]}
    api: dict[str, Any] = {}
    for node in ui["nodes"]:
        if not _executes(node):
            continue
        info = object_info[node["type"]]
        inputs: dict[str, Any] = {}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                link = links[socket["link"]]
                inputs[socket["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values") or [])
        index = 0
        for section in ("required", "optional"):
            for name, spec in (info["input"].get(section) or {}).items():
                if not _is_widget(spec):
                    continue
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if name not in inputs:
                    inputs[name] = values[index]
                index += 1
                if options.get("control_after_generate"):
                    index += 1  # the frontend's "control after generate" companion widget
                if options.get("image_upload"):
                    index += 1  # the upload button widget
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api

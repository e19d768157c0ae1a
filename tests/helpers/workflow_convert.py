"""UI-format (LiteGraph) workflow → API format, using the server's /object_info for widget order.

Written independently of tools/workflows.py so that the twin check compares two derivations.
"""

from __future__ import annotations

from typing import Any

SCALAR = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTES = {"Note", "MarkdownNote"}


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in SCALAR


def ui_to_api(ui: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    links = {link[0]: link for link in ui["links"]}
    api: dict[str, Any] = {}
    for node in ui["nodes"]:
        if node["type"] in NOTES or node.get("mode", 0) == 4:  # notes and bypassed nodes do not execute
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

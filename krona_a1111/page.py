"""The KronA page of the extra-networks browser: cards for .krona.safetensors files with their
trigger words and base model; clicking one inserts `<krona:name:weight>` and the trigger words."""

from __future__ import annotations

import os

from modules import shared, ui_extra_networks
from modules.ui_extra_networks import quote_js

from krona_core.files.model import KronAFileError
from krona_core.files.reader import read_summary

from .networks import krona_dir, krona_files, lora_dir


class ExtraNetworksPageKronA(ui_extra_networks.ExtraNetworksPage):
    def __init__(self):
        super().__init__("KronA")
        self.allow_negative_prompt = True

    def refresh(self) -> None:
        pass  # files are listed from disk on every call

    def create_item(self, name: str, index: int | None = None, enable_filter: bool = True):
        path = krona_files().get(name)
        if path is None:
            return None
        try:
            summary = read_summary(path)
        except (KronAFileError, OSError) as exc:
            summary = {"name": name, "base_model": None, "trigger_words": [], "modules": 0, "error": str(exc)}
        stem = path[: -len(".safetensors")]
        tag_name = name[: -len(".krona")] if name.endswith(".krona") else name
        words = summary.get("trigger_words") or []
        description = " · ".join(filter(None, [f"base {summary.get('base_model') or 'unknown'}",
                                               f"trigger: {', '.join(words)}" if words else None,
                                               summary.get("error")]))
        prompt = quote_js(f"<krona:{tag_name}:") + " + opts.extra_networks_default_multiplier + " + quote_js(">")
        if words:
            prompt += " + " + quote_js(" " + ", ".join(words))
        return {
            "name": name,
            "filename": path,
            "shorthash": "",
            "preview": self.find_preview(stem),
            "description": self.find_description(stem) or description,
            "search_terms": [self.search_terms_from_path(path), *words],
            "local_preview": f"{stem}.{shared.opts.samples_format}",
            "metadata": summary,
            "sort_keys": {"default": index, **self.get_sort_keys(path)},
            "prompt": prompt,
            "negative_prompt": quote_js(""),
        }

    def list_items(self):
        for index, name in enumerate(sorted(krona_files())):
            item = self.create_item(name, index)
            if item is not None:
                yield item

    def allowed_directories_for_previews(self) -> list[str]:
        return [d for d in (krona_dir(), lora_dir()) if os.path.isdir(d)]

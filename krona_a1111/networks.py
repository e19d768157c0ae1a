"""`<krona:name:weight>` as an alias of the web UI's built-in Lora network (the same loader, the
same math), and models/krona as a second folder of networks.

The alias works by rewriting the tags to `<lora:…>` before the web UI parses extra networks, and by
registering the KronA files of models/krona in the built-in network's registry (its
`available_networks` dictionaries, which it also fills itself) — no web-UI or torch code is replaced.
"""

from __future__ import annotations

import os
import re

from krona_core.files.model import SUFFIX
from krona_core.files.paths import walk_files

TAG = re.compile(r"<krona:([^:>]+)((?::[^>]*)?)>")


def krona_dir() -> str:
    from modules import paths

    return os.path.join(paths.models_path, "krona")


def lora_dir() -> str:
    from modules import shared

    return shared.cmd_opts.lora_dir


def krona_files() -> dict[str, str]:
    """{network name (file name without its last extension, as the web UI names it): path} of every
    *.krona.safetensors in models/krona and the Lora folder (models/krona wins on equal names).
    The walk survives symlink loops and unreadable folders (krona_core.files.paths)."""
    found: dict[str, str] = {}
    for root, suffix in ((lora_dir(), SUFFIX), (krona_dir(), ".safetensors")):
        if not os.path.isdir(root):
            continue
        for relative in walk_files(root, (suffix,)):
            found[os.path.splitext(os.path.basename(relative))[0]] = os.path.join(root, relative)
    return found


def register_files() -> None:
    """Put models/krona files into the built-in Lora registry (it only scans the Lora folder)."""
    import network
    import networks

    for name, path in krona_files().items():
        if name in networks.available_networks:
            continue
        entry = network.NetworkOnDisk(name, path)
        networks.available_networks[name] = entry
        networks.available_network_aliases.setdefault(name, entry)
        networks.available_network_aliases.setdefault(entry.alias, entry)


def resolve(name: str) -> str:
    """Network name for a `<krona:NAME:…>` tag: NAME.krona (the file NAME.krona.safetensors) or NAME."""
    files = krona_files()
    for candidate in (name + ".krona", name):
        if candidate in files:
            return candidate
    return name


def rewrite(prompt: str) -> str:
    return TAG.sub(lambda m: f"<lora:{resolve(m.group(1))}{m.group(2)}>", prompt)


def rewrite_processing(p) -> bool:
    """Rewrite every prompt list of a processing object; True when a KronA tag was present."""
    changed = False
    for attribute in ("all_prompts", "all_negative_prompts", "all_hr_prompts", "all_hr_negative_prompts"):
        prompts = getattr(p, attribute, None)
        if not prompts:
            continue
        new = [rewrite(text) for text in prompts]
        if new != prompts:
            setattr(p, attribute, new)
            changed = True
    for attribute in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
        value = getattr(p, attribute, None)
        if isinstance(value, str) and TAG.search(value):
            setattr(p, attribute, rewrite(value))
            changed = True
    if changed:
        register_files()
    return changed

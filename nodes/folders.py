"""The `krona` model folder and the file lists the nodes offer."""

from __future__ import annotations

import os
import re

import folder_paths

from ..krona_core.files.model import SUFFIX
from ..krona_core.files.paths import PathRefused, listed_path, resolve_inside, walk_files

FOLDER = "krona"


def register() -> None:
    """Add models/krona as the default `krona` folder, keeping any user paths
    (extra_model_paths.yaml is read before custom nodes load) and only .safetensors files."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    folder_paths.add_model_folder_path(FOLDER, default, is_default=True)
    paths, extensions = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(extensions) | {".safetensors"})
    os.makedirs(default, exist_ok=True)


def _roots(folder: str) -> list[str]:
    return [p for p in folder_paths.get_folder_paths(folder) if os.path.isdir(p)]


def krona_files() -> list[str]:
    """Files for Apply/Load KronA: every .safetensors in models/krona, plus *.krona.safetensors in
    loras — listed by the pack's own walk, which survives symlink loops and unreadable folders."""
    names: list[str] = []
    for folder, suffix in ((FOLDER, ".safetensors"), ("loras", SUFFIX)):
        for root in _roots(folder):
            names += [n for n in walk_files(root, (suffix,)) if n not in names]
    return sorted(names)


def resolve(name: str) -> str:
    """Full path of a listed file (models/krona wins over loras for equal names): only names the
    listing shows are read, so absolute paths and '..' never reach a file."""
    for folder, suffix in ((FOLDER, ".safetensors"), ("loras", SUFFIX)):
        for root in _roots(folder):
            path = listed_path(root, name, (suffix,))
            if path is not None:
                return path
    raise FileNotFoundError(f"KronA file {name!r} not found in models/{FOLDER} or in the loras folder")


def fingerprint(name: str):
    """Cache key of a listed file for ComfyUI: changes when the file on disk changes."""
    try:
        stat = os.stat(resolve(name))
        return (name, stat.st_mtime_ns, stat.st_size)
    except (OSError, FileNotFoundError):
        return name


def save_path(prefix: str) -> str:
    """models/krona/<prefix>_NNNNN.krona.safetensors with the next free counter.

    The prefix may name subfolders (created) but is confined to the krona folder by the pack's one
    rule for names to write (`resolve_inside`: no absolute path, no '..', not out through a link).
    """
    cleaned = prefix.strip().replace("\\", "/")
    if not cleaned:
        raise ValueError("filename prefix is empty")
    if cleaned.endswith(SUFFIX):
        cleaned = cleaned[: -len(SUFFIX)]
    root = folder_paths.get_folder_paths(FOLDER)[0]
    try:
        target = resolve_inside(root, cleaned + SUFFIX, (SUFFIX,), "filename prefix")
    except PathRefused as exc:
        raise ValueError(f"{exc} (models/{FOLDER})") from None
    directory, stem = os.path.dirname(target), os.path.basename(target)[: -len(SUFFIX)]
    os.makedirs(directory, exist_ok=True)
    pattern = re.compile(re.escape(stem) + r"_(\d{5})" + re.escape(SUFFIX) + "$")
    used = [int(m.group(1)) for f in os.listdir(directory) if (m := pattern.match(f))]
    counter = max(used, default=0) + 1
    return os.path.join(directory, f"{stem}_{counter:05d}{SUFFIX}")

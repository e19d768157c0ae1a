"""Paths from requests, nodes and widgets, confined to their models folder, and folder listings
that survive symlink loops and unreadable entries.

Two rules, one per direction:
- a name to *write* (`resolve_inside`): relative, no `..`, an allowed suffix, and its real path
  (after symlinks) inside the real root — nothing is ever written outside the models folder;
- a name to *read* (`listed_path`): one of the files the folder's listing shows — the operator's
  own tree, symlinked folders they made included, and nothing else.
`walk_files` lists a folder tree following symlinked folders once each (a link to `.` or to a
parent is not walked again) and skips what it cannot read instead of failing the whole listing.
"""

from __future__ import annotations

import os
import re
from typing import Iterator, Sequence


class PathRefused(ValueError):
    """A user-supplied path that would leave its folder, or names the wrong kind of file."""


def resolve_inside(root: str | os.PathLike, user_path: str, suffixes: Sequence[str] = (".safetensors",),
                   what: str = "file") -> str:
    """Where writing `user_path` inside `root` puts the file: its folder's real path (after
    symlinks) joined with its name. Refused (PathRefused) when it is absolute, has `..` parts, its
    folder leaves `root` after symlinks, or it does not end with one of `suffixes`. The message
    names the request's path only, never what exists on the server."""
    cleaned = str(user_path).strip().replace("\\", "/")
    if not cleaned:
        raise PathRefused(f"the {what} name is empty")
    if "\x00" in cleaned or cleaned.startswith("/") or re.match(r"^[A-Za-z]:", cleaned) or ".." in cleaned.split("/"):
        raise PathRefused(f"{user_path!r}: give a {what} name relative to its models folder (no absolute path, no '..')")
    if suffixes and not cleaned.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise PathRefused(f"{user_path!r}: the {what} name must end with {' or '.join(suffixes)}")
    real_root = os.path.realpath(root)
    folder, name = os.path.split(os.path.join(real_root, cleaned.rstrip("/")))
    real = os.path.join(os.path.realpath(folder), name)  # writes replace a final link, never follow it
    if os.path.commonpath([real_root, real]) != real_root or real == real_root or not name:
        raise PathRefused(f"{user_path!r}: leaves its models folder (through a symbolic link?)")
    return real


def walk_files(root: str | os.PathLike, suffixes: Sequence[str] = ()) -> Iterator[str]:
    """Paths of the files under `root` (relative to it, '/'-separated, sorted per folder) whose
    names end with one of `suffixes` (all when empty). Symlinked folders are followed, each real
    folder once; unreadable folders are skipped."""
    seen: set[tuple[int, int]] = set()
    pending = [("", os.fspath(root))]
    while pending:
        relative, directory = pending.pop()
        try:
            info = os.stat(directory)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        folders = []
        for entry in entries:
            name = f"{relative}{entry.name}"
            try:
                is_dir = entry.is_dir()  # follows symlinks; a dangling link is neither
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_dir:
                folders.append((name + "/", entry.path))
            elif is_file and (not suffixes or entry.name.endswith(tuple(suffixes))):
                yield name
        pending.extend(reversed(folders))


def listed_path(root: str | os.PathLike, name: str, suffixes: Sequence[str] = (".safetensors",)) -> str | None:
    """The path of `name` when it is one of the files `walk_files(root, suffixes)` lists, else None."""
    if not name or not os.path.isdir(root):
        return None
    wanted = str(name).replace("\\", "/")
    return os.path.join(os.fspath(root), wanted) if wanted in set(walk_files(root, suffixes)) else None

"""Atomic file creation: write to a temporary file beside the target, fsync, then link it into place.

The one rule for every file the pack writes (adapters, LoRAs, merged checkpoints, training state):
a reader never sees a half-written file, a file is never silently overwritten (unless asked), and
the new file gets the permissions a plain `open()` would give under the user's umask — not the
0600 of `tempfile.mkstemp`, which would make a service user's adapters unreadable to others.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no other way on this OS: set and restore
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = False) -> str:
    """Create `path` with the content `write(tmp_path)` puts into a temporary file.

    Raises FileExistsError when `path` exists (or appears while writing) and overwrite is False;
    the temporary file is removed whatever happens.
    """
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # after writing: a writer may replace the file
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _link_new(tmp: str, path: str) -> None:
    try:
        os.link(tmp, path)  # atomic create-if-absent
    except FileExistsError:
        raise FileExistsError(path) from None
    except OSError:  # file systems without hard links
        if os.path.exists(path):
            raise FileExistsError(path) from None
        os.replace(tmp, path)


def write_bytes(path: str | os.PathLike, blob: bytes, overwrite: bool = False) -> str:
    def put(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(blob)

    return atomic_write(path, put, overwrite)


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None,
                      overwrite: bool = False) -> str:
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata), overwrite)

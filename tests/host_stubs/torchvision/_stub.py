"""Shared machinery of the torchvision stand-in (test tooling only, never shipped in the pack).

No torchvision wheel works beside torch 2.13, but ComfyUI imports torchvision at module level in
model families SD never touches (Stable Cascade, Cosmos, ACE). This stand-in lets those modules
import; anything that actually *uses* torchvision raises ``TorchvisionUnavailable``.
"""

from __future__ import annotations

import sys
import types

MESSAGE = (
    "{name} is a stand-in from tests/host_stubs (the real torchvision is not installed: no "
    "torchvision build works beside this torch). It lets ComfyUI start for SD-family tests; "
    "a graph that needs torchvision cannot run here."
)


class TorchvisionUnavailable(RuntimeError):
    pass


class Unavailable:
    """Placeholder for any torchvision attribute: attribute access nests, calling raises."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return Unavailable(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise TorchvisionUnavailable(MESSAGE.format(name=self._name))

    def __mro_entries__(self, bases):
        # `class X(torchvision.something.Base)` at import time: give a base that fails on use
        name = self._name

        class _UnavailableBase:
            def __init__(self, *args, **kwargs):
                raise TorchvisionUnavailable(MESSAGE.format(name=name))

        _UnavailableBase.__name__ = name.rsplit(".", 1)[-1]
        return (_UnavailableBase,)

    def __repr__(self) -> str:
        return f"<torchvision stand-in {self._name}>"

    def __bool__(self) -> bool:
        return False


def install_module_getattr(module_name: str) -> None:
    """Give ``module_name`` a module-level ``__getattr__`` returning ``Unavailable`` objects."""
    module = sys.modules[module_name]

    def __getattr__(attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(f"module {module_name!r} has no attribute {attr!r}")
        return Unavailable(f"{module_name}.{attr}")

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]


__all__ = ["MESSAGE", "TorchvisionUnavailable", "Unavailable", "install_module_getattr", "types"]

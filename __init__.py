"""ComfyUI-KronA — ComfyUI entry point.

ComfyUI imports this package from custom_nodes/ and calls `comfy_entrypoint` (the V3 node API).
Importing it needs nothing but the standard library, so tests and the A1111/Forge extension can
import the folder too; the node classes (and torch) load only when ComfyUI asks for them.
"""


async def comfy_entrypoint():
    from .nodes import KronAExtension, folders

    folders.register()  # before the node schemas list the files of the krona folder
    return KronAExtension()


__all__ = ["comfy_entrypoint"]

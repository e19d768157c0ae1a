"""ComfyUI-KronA — ComfyUI entry point.

ComfyUI imports this package from custom_nodes/ and calls `comfy_entrypoint` (the V3 node API).
Importing it needs nothing but the standard library, so tests and the A1111/Forge extension can
import the folder too; the node classes (and torch) load only when ComfyUI asks for them.
"""


WEB_DIRECTORY = "./web"  # the live loss chart and trigger-word chips (web/krona.js)


async def comfy_entrypoint():
    from .nodes import KronAExtension, comfy_adapter, folders, routes

    folders.register()  # before the node schemas list the files of the krona folder
    routes.register()
    comfy_adapter.register()  # "KronA" in ComfyUI's own Train LoRA node
    return KronAExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]

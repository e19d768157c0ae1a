"""ComfyUI-KronA — ComfyUI entry point.

ComfyUI imports this package from custom_nodes/. It must stay importable without ComfyUI (the
tests and the A1111/Forge extension import the folder too) and must not import anything heavy:
node classes are registered here, the math lives in krona_core and loads on first use.
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

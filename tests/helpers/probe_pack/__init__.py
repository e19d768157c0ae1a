"""A test-only ComfyUI node pack: reports the state of a MODEL's diffusion model, so that tests can
see from outside whether a node left the host's shared model changed (its parameter objects,
inference-tensor status, requires_grad flags and forward hooks)."""

import hashlib
import json


class KronATestModelState:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "tag": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always re-run: the state may have changed behind the cache

    def run(self, model, tag):
        unet = model.model.diffusion_model
        params = list(unet.parameters())
        ids = hashlib.sha256(",".join(str(id(p)) for p in params).encode()).hexdigest()
        state = {
            "parameters": len(params),
            "inference": sum(bool(p.is_inference()) for p in params),
            "requires_grad": sum(bool(p.requires_grad) for p in params),
            "hooks": sum(len(m._forward_hooks) for m in unet.modules()),
            "objects": ids,
        }
        return {"ui": {"text": [json.dumps(state, sort_keys=True)]}}


NODE_CLASS_MAPPINGS = {"KronATestModelState": KronATestModelState}

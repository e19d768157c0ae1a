"""A test-only ComfyUI node pack: reports the state of a MODEL's diffusion model, so that tests can
see from outside whether a node left the host's shared model changed (its parameter objects,
inference-tensor status, requires_grad flags and forward hooks)."""

import hashlib
import json


class _Probe:
    """What every probe node shares: an output node in "testing" that reruns every time (the state it
    reports may have changed behind ComfyUI's cache) and returns its findings as JSON text."""

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")


class KronATestModelState(_Probe):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "tag": ("STRING", {"default": ""})}}

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


def _kron(w1, w2):
    import torch

    if w2.dim() > w1.dim():
        w1 = w1.reshape(*w1.shape, 1, 1)
    return torch.kron(w1.contiguous(), w2.contiguous())


class KronATestAdapterMath(_Probe):
    """The pack's KronA weight adapter, found where ComfyUI's Train LoRA looks (adapter_maps), checked
    against torch.kron and torch's own layers: merge patch (fp32 and the fp16 intermediates of the
    low-VRAM / dynamic paths), h() for linear and conv, the (loaded_keys, weights) rebuild, load(),
    create_train() / to_train()."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    def run(self, seed):
        import torch
        import torch.nn.functional as F
        from comfy.weight_adapter import adapter_maps

        cls = adapter_maps["KronA"]
        g = torch.Generator().manual_seed(seed)
        out = {"class": cls.__name__, "registered_algorithms": sorted(adapter_maps)}
        w1, w2 = torch.randn(4, 3, generator=g), torch.randn(5, 2, generator=g)
        adapter = cls({"m.lokr_w1", "m.lokr_w2"}, (w1, w2))
        x = torch.randn(2, 7, 6, generator=g)
        adapter.multiplier, adapter.is_conv, adapter.kw_dict = 0.7, False, {}
        out["h_linear"] = float((adapter.h(x, torch.zeros(2, 7, 20)) - 0.7 * F.linear(x, _kron(w1, w2))).abs().max())
        cw1, cw2 = torch.randn(2, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
        conv_adapter = cls(set(), (cw1, cw2))
        conv_adapter.multiplier, conv_adapter.is_conv, conv_adapter.conv_dim = 1.3, True, 2
        conv_adapter.kw_dict = {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
        xc = torch.randn(1, 6, 9, 9, generator=g)
        ref = 1.3 * F.conv2d(xc, _kron(cw1, cw2), stride=2, padding=1)
        out["h_conv"] = float((conv_adapter.h(xc, torch.zeros_like(ref)) - ref).abs().max())
        base = torch.randn(20, 6, generator=g)
        for dtype in (torch.float32, torch.float16):
            weight = base.to(dtype)
            got = adapter.calculate_weight(weight.clone(), "m.weight", 0.5, 1.0, None, lambda a: a, intermediate_dtype=dtype)
            expected = base.to(dtype) + (0.5 * _kron(w1, w2)).to(dtype)  # ΔW in fp32, cast once, then added
            out[f"patch_{str(dtype).split('.')[-1]}"] = float((got.float() - expected.float()).abs().max())
        rebuilt = type(adapter)(adapter.loaded_keys, adapter.weights)
        out["rebuilt_equal"] = bool(torch.equal(rebuilt.calculate_weight(base.clone(), "m", 1.0, 1.0, None, lambda a: a),
                                                adapter.calculate_weight(base.clone(), "m", 1.0, 1.0, None, lambda a: a)))
        out["calculate_shape"] = adapter.calculate_shape("m.weight")
        lokr = {"m.lokr_w1": w1, "m.lokr_w2": w2}
        out["load_full"] = cls.load("m", lokr, 1.0, None) is not None
        out["load_decomposed"] = cls.load("m", {**lokr, "m.lokr_w2_a": w2}, 1.0, None) is not None
        out["load_dora"] = cls.load("m", lokr, 1.0, torch.ones(20)) is not None
        big = torch.randn(320, 768, generator=g)
        train = cls.create_train(big)
        out["train_shapes"] = [list(train.lokr_w1.shape), list(train.lokr_w2.shape)]
        out["train_starts_at_zero"] = bool(torch.equal(train(big), big))
        trained = adapter.to_train()
        out["to_train_equal"] = float((trained(base) - (base + _kron(w1, w2))).abs().max())
        return {"ui": {"text": [json.dumps(out, sort_keys=True)]}}


class KronATestDeepCloneBypass(_Probe):
    """Two model instances sharing one bypass injection (what ComfyUI's multi-GPU deep clone makes):
    each must be adapted, and ejecting one must leave the other adapted."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "base": ("MODEL",)}}

    def run(self, model, base):
        import copy

        import torch

        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 8, 8, generator=g)
        sigma = torch.tensor([1.0])
        cond = torch.randn(1, 77, 768, generator=g)

        def predict(patcher):
            return patcher.model.apply_model(x, sigma, c_crossattn=cond).float()

        reference = predict(base)
        other = model.clone()
        other.model = copy.deepcopy(model.model)  # the deep clone: its own modules, the same injections
        diffs = {}
        model.inject_model()
        other.inject_model()
        diffs["a_adapted"] = float((predict(model) - reference).abs().max())
        diffs["b_adapted"] = float((predict(other) - reference).abs().max())
        diffs["a_equals_b"] = float((predict(model) - predict(other)).abs().max())
        adapted = predict(other)
        model.eject_model()
        diffs["a_after_eject"] = float((predict(model) - reference).abs().max())
        diffs["b_after_a_ejected"] = float((predict(other) - adapted).abs().max())
        other.eject_model()
        diffs["b_after_eject"] = float((predict(other) - reference).abs().max())
        return {"ui": {"text": [json.dumps(diffs, sort_keys=True)]}}


NODE_CLASS_MAPPINGS.update({"KronATestAdapterMath": KronATestAdapterMath,
                            "KronATestDeepCloneBypass": KronATestDeepCloneBypass})


class KronATestConditioning:
    """Seeded CONDITIONING of any width, for diffusion transformers whose real text encoders have
    fixed multi-GB sizes (T5-XXL, Qwen2.5-VL, Gemma): (1, tokens, width) plus a pooled vector."""

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "run"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 4096, "min": 1, "max": 8192}),
                             "tokens": ("INT", {"default": 4, "min": 1, "max": 512}),
                             "pooled": ("INT", {"default": 0, "min": 0, "max": 8192}),
                             "mask": ("BOOLEAN", {"default": False}),
                             "seed": ("INT", {"default": 0})}}

    def run(self, width, tokens, pooled, mask, seed):
        import torch

        g = torch.Generator().manual_seed(seed)
        extra = {"pooled_output": torch.randn(1, pooled, generator=g)} if pooled else {}
        if mask:  # the text-attention mask Lumina 2's model reads (all tokens real)
            extra["attention_mask"] = torch.ones(1, tokens, dtype=torch.long)
        return ([[torch.randn(1, tokens, width, generator=g), extra]],)


class KronATestLatentValues(_Probe):
    """A LATENT's values, flattened, as JSON (tests compare denoised latents across graphs)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "tag": ("STRING", {"default": ""})}}

    def run(self, samples, tag):
        values = samples["samples"].float().flatten().tolist()
        return {"ui": {"text": [json.dumps({"shape": list(samples["samples"].shape), "values": values})]}}


NODE_CLASS_MAPPINGS.update({"KronATestConditioning": KronATestConditioning,
                            "KronATestLatentValues": KronATestLatentValues})

from .flow_probe import NODE_CLASS_MAPPINGS as _FLOW_PROBES  # noqa: E402

NODE_CLASS_MAPPINGS.update(_FLOW_PROBES)

"""Tiny seeded diffusion-transformer files in ComfyUI's own format, built with ComfyUI's own classes.

Run in the tests' interpreter with the ComfyUI checkout first on sys.path (`write_tiny_dit`):
ComfyUI's `model_config_from_unet_config` picks the model class for a config, its `get_model`
builds the diffusion model, and the weights are filled from a seed. The config is then checked to
be what ComfyUI's own detection reads back off the file's shapes, so UNETLoader builds the same
model. Widths are the smallest this ComfyUI's detection allows: it reads some from the shapes (SD3,
Wan) and fixes others at the real models' values (Flux, Chroma, Lumina 2, Qwen-Image: depth 1).

    python tiny_dit.py <family> <out.safetensors> <seed> <dtype>
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: the ComfyUI unet_config of each tiny model (as its model_detection reads it off the shapes)
CONFIGS = {
    "flux1": {"image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 768,
              "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 1,
              "depth_single_blocks": 1, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
              "guidance_embed": True},
    "chroma": {"image_model": "chroma", "in_channels": 64, "patch_size": 2, "out_channels": 64, "context_in_dim": 4096,
               "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 1, "depth_single_blocks": 1,
               "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True, "in_dim": 64,
               "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5},
    "sd3": {"in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 2, "input_size": None,
            "adm_in_channels": 32, "context_embedder_config": {"target": "torch.nn.Linear",
                                                               "params": {"in_features": 48, "out_features": 128}},
            "num_patches": 64, "pos_embed_max_size": 8, "qk_norm": "rms", "pos_embed_scaling_factor": None,
            "x_block_self_attn_layers": [0]},
    "wan": {"image_model": "wan2.1", "dim": 128, "out_dim": 16, "num_heads": 1, "ffn_dim": 256, "num_layers": 2,
            "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True,
            "eps": 1e-6, "in_dim": 16, "model_type": "t2v"},
    "lumina2": {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 2304, "cap_feat_dim": 32,
                "n_layers": 1, "n_heads": 24, "n_kv_heads": 8, "qk_norm": True, "axes_dims": [32, 32, 32],
                "axes_lens": [300, 512, 512]},
    "qwen_image": {"image_model": "qwen_image", "in_channels": 64, "num_layers": 1},
}


def _build(family: str, seed: int):
    import torch
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported: no device probing
    import comfy.model_detection as detection

    config = dict(CONFIGS[family])
    model_config = detection.model_config_from_unet_config(config)
    if model_config is None:
        raise SystemExit(f"this ComfyUI has no model for {family} ({config})")
    model = model_config.get_model({}, "")
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in model.diffusion_model.state_dict().items():
        if value.dim() >= 2:
            fan_in = value[0].numel()
            sd[key] = torch.randn(value.shape, generator=g) / fan_in ** 0.5
        elif key.endswith(("scale", "norm.weight", "norm_q.weight", "norm_k.weight")) or ".norm" in key:
            sd[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=g)
        else:
            sd[key] = 0.02 * torch.randn(value.shape, generator=g)
    detected = detection.model_config_from_unet(sd, "")
    if type(detected) is not type(model_config):
        raise SystemExit(f"ComfyUI reads the tiny {family} back as {type(detected).__name__}, not {type(model_config).__name__}")
    return sd, type(model_config).__name__


#: real-size configs for ComfyUI's own diffusers → original maps (comfy.utils.*_to_diffusers)
MAP_CONFIGS = {
    "flux1": ("flux_to_diffusers", {"depth": 19, "depth_single_blocks": 38, "hidden_size": 3072}),
    "sd3": ("mmdit_to_diffusers", {"depth": 38, "num_blocks": 38}),
}


def dump_maps(out: str) -> None:
    """ComfyUI's own diffusers → original key maps as JSON: {family: {diffusers key: [key, rows]}}
    (rows: [start, size] of a fused weight, or "transformed" where ComfyUI rewrites the values)."""
    import json

    from comfy.cli_args import args

    args.cpu = True
    import comfy.utils

    maps = {}
    for family, (function, config) in MAP_CONFIGS.items():
        entries = {}
        for key, to in getattr(comfy.utils, function)(config).items():
            if isinstance(to, str):
                entries[key] = [to, None]
            elif len(to) == 2:
                entries[key] = [to[0], list(to[1][1:])]
            else:
                entries[key] = [to[0], "transformed"]
        maps[family] = entries
    with open(out, "w") as fh:
        json.dump(maps, fh)


def main(family: str, out: str, seed: str, dtype: str) -> None:
    import torch
    from safetensors.torch import save_file

    sd, name = _build(family, int(seed))
    save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in sd.items()}, out, {"comfy_model": name})


def _in_host(comfyui: Path, arguments: list[str], cwd: Path, what: str) -> None:
    """Run this file with `arguments` in the tests' interpreter, the ComfyUI checkout on its path."""
    from .host_process import host_interpreter_env

    env = host_interpreter_env(comfyui)
    done = subprocess.run([sys.executable, __file__, *arguments], env=env, cwd=str(cwd), capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{what}: {done.stderr[-3000:]}")


def write_tiny_dit(comfyui: Path, family: str, out: Path, seed: int = 0, dtype: str = "float32") -> Path:
    """Write the tiny `family` model to `out` (a new file) with the ComfyUI checkout at `comfyui`."""
    tmp = out.with_name(out.name + ".part")
    _in_host(comfyui, [family, str(tmp), str(seed), dtype], out.parent, f"tiny {family} model")
    tmp.rename(out)
    return out


def cached_tiny_dit(comfyui: Path, family: str, dtype: str) -> Path:
    """The tiny `family` model (seed 0) in the tests' cache, built on first use (keyed by its config)."""
    import hashlib
    import json

    from .tiny_comfy import cache_dir

    digest = hashlib.sha256(json.dumps(CONFIGS[family], sort_keys=True).encode()).hexdigest()[:10]
    path = cache_dir() / f"tiny-dit-{family}-{dtype}-{digest}.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tiny_dit(comfyui, family, path, seed=0, dtype=dtype)
    return path


def comfy_diffusers_maps(comfyui: Path, folder: Path) -> dict:
    """`dump_maps` of the ComfyUI checkout at `comfyui`."""
    import json

    out = folder / "maps.json"
    _in_host(comfyui, ["--maps", str(out)], folder, "ComfyUI's diffusers maps")
    return json.loads(out.read_text())


if __name__ == "__main__":
    if sys.argv[1] == "--maps":
        dump_maps(sys.argv[2])
    else:
        main(*sys.argv[1:])

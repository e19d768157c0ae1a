"""Tiny, seeded, ComfyUI-loadable single-file checkpoints for integration tests.

Everything here is built from seeded random numbers: nothing is downloaded and nothing is
committed. The files use the original ldm / SGM key layout of real single-file checkpoints
(``model.diffusion_model.*``, ``cond_stage_model.*`` or ``conditioner.embedders.*``,
``first_stage_model.*``) so that ComfyUI's ``CheckpointLoaderSimple`` (and other hosts that read
single-file checkpoints) detect and load them like the real thing.

How small they can be is dictated by the host's model detection (ComfyUI 0.3.x,
``comfy/model_detection.py`` + ``comfy/supported_models.py``):

* The UNet is the only part whose size is inferred from the weights. ComfyUI matches a fixed
  subset of the detected config per model class:
    - ``SD15``: model_channels 320, context_dim 768, conv proj_in/out, no ``label_emb``.
      Depths and the number of levels are free, so the SD1.5 UNet here has a single level
      (one res block + one transformer on the way down, a transformer in the middle block, two
      res blocks + transformers on the way up).
    - ``SDXL``: model_channels 320, context_dim 2048, linear proj_in/out, adm_in_channels 2816
      *and* ``transformer_depth == [0, 0, 2, 2, 10, 10]`` (one entry per input res block).
      Smaller depth lists are classified as ``SSD1B`` / ``Segmind_Vega`` / ``KOALA_*`` (SDXL
      subclasses), so the tiny SDXL keeps that list. ``channel_mult`` is not matched, so every
      level is 320 wide; output-block and middle-block depths are not matched either and are
      1 here (real SDXL: 10/2/0 and 10). Block indices therefore equal real SDXL's
      (``input_blocks.4.1``, ``input_blocks.7.1`` … ``output_blocks.5.1``, ``middle_block.1``).
* Text encoders are NOT inferred from the weights: ComfyUI builds CLIP-L (12 layers, width 768)
  and OpenCLIP bigG (32 layers, width 1280) from fixed JSON configs and loads the checkpoint
  into them with ``strict=False``; missing layers would keep uninitialised memory and only log
  "clip missing". So the text encoders have their real shapes (that is most of the file size).
* The VAE config is fixed too (ch 128, ch_mult 1,2,4,4) and keeps its real shape (the encoder
  is needed by training nodes that encode images).

All weights are float16, drawn from N(0, (gain/sqrt(fan_in))^2) with a per-component seed
derived from ``seed``; norms are 1/0. Gains are chosen so that a 4-step euler txt2img run
gives finite, non-constant images whose pixels depend on every attention layer.

Only torch, safetensors and numpy are used; ComfyUI is never imported here.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from safetensors.torch import save_file

__all__ = [
    "VERSION",
    "KINDS",
    "SD15_UNET",
    "SDXL_UNET",
    "UNetSpec",
    "cache_dir",
    "cached_checkpoint",
    "sd15_state_dict",
    "sdxl_state_dict",
    "controlnet_state_dict",
    "write_sd15_checkpoint",
    "write_sdxl_checkpoint",
    "write_controlnet",
]

#: Bump whenever the layout or the initialisation changes: it keys the cache.
VERSION = 1

DTYPE = torch.float16


@dataclass(frozen=True)
class UNetSpec:
    """Shape of an ldm/SGM ``UNetModel`` (the keys ComfyUI's ``detect_unet_config`` reads)."""

    model_channels: int
    channel_mult: Sequence[int]
    num_res_blocks: Sequence[int]
    #: transformer depth per input res block, in input-block order
    transformer_depth: Sequence[int]
    #: transformer depth per output block, in output-block order (output_blocks.0 first)
    transformer_depth_output: Sequence[int]
    #: >= 0: res + transformer(depth) + res; -1: a single res block; -2: no middle block
    transformer_depth_middle: int
    context_dim: int
    use_linear_in_transformer: bool
    adm_in_channels: Optional[int] = None
    in_channels: int = 4
    out_channels: int = 4

    def __post_init__(self):
        assert len(self.channel_mult) == len(self.num_res_blocks)
        assert len(self.transformer_depth) == sum(self.num_res_blocks)
        assert len(self.transformer_depth_output) == sum(n + 1 for n in self.num_res_blocks)


#: Tiny SD1.5: ComfyUI detects it as ``SD15`` (EPS, CLIP-L, SD1 latent format).
SD15_UNET = UNetSpec(
    model_channels=320,
    channel_mult=(1,),
    num_res_blocks=(1,),
    transformer_depth=(1,),
    transformer_depth_output=(1, 1),
    transformer_depth_middle=1,
    context_dim=768,
    use_linear_in_transformer=False,
)

#: Tiny SDXL base: ComfyUI detects it as ``SDXL`` (CLIP-L + OpenCLIP bigG, SDXL latent format).
SDXL_UNET = UNetSpec(
    model_channels=320,
    channel_mult=(1, 1, 1),
    num_res_blocks=(2, 2, 2),
    transformer_depth=(0, 0, 2, 2, 10, 10),
    transformer_depth_output=(1, 1, 1, 1, 1, 1, 0, 0, 0),
    transformer_depth_middle=1,
    context_dim=2048,
    use_linear_in_transformer=True,
    adm_in_channels=2816,
)

# Gains (multiplying 1/sqrt(fan_in)). Residual-branch outputs are damped so the residual
# streams stay O(1) in fp16; the UNet's final conv is sized so that eps predictions are O(1).
_GAIN_DEFAULT = 1.0
_GAIN_RESIDUAL_OUT = 0.5
_GAIN_UNET_OUT = 1.0
_BIAS_STD = 0.01


def _sub_seed(seed: int, name: str) -> int:
    h = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class _Builder:
    """Collects seeded fp16 tensors under ldm key names."""

    def __init__(self, seed: int, component: str, sd: Dict[str, torch.Tensor]):
        self.g = torch.Generator().manual_seed(_sub_seed(seed, component))
        self.sd = sd

    def _put(self, key: str, t: torch.Tensor) -> None:
        assert key not in self.sd, key
        self.sd[key] = t.to(DTYPE).contiguous()

    def normal(self, key: str, shape, std: float) -> None:
        t = torch.randn(tuple(shape), generator=self.g, dtype=torch.float32)
        t.mul_(std)
        self._put(key, t)

    def const(self, key: str, shape, value: float) -> None:
        self._put(key, torch.full(tuple(shape), float(value), dtype=torch.float32))

    def linear(self, prefix: str, out_f: int, in_f: int, bias: bool = True, gain: float = _GAIN_DEFAULT) -> None:
        self.normal(prefix + ".weight", (out_f, in_f), gain / math.sqrt(in_f))
        if bias:
            self.normal(prefix + ".bias", (out_f,), _BIAS_STD)

    def conv(self, prefix: str, out_c: int, in_c: int, k: int, bias: bool = True, gain: float = _GAIN_DEFAULT) -> None:
        self.normal(prefix + ".weight", (out_c, in_c, k, k), gain / math.sqrt(in_c * k * k))
        if bias:
            self.normal(prefix + ".bias", (out_c,), _BIAS_STD)

    def norm(self, prefix: str, ch: int) -> None:
        self.const(prefix + ".weight", (ch,), 1.0)
        self.const(prefix + ".bias", (ch,), 0.0)


# --------------------------------------------------------------------------------------------
# UNet (ldm ``openaimodel.UNetModel`` key layout)
# --------------------------------------------------------------------------------------------

def _resblock(b: _Builder, p: str, ch_in: int, ch_out: int, emb: int) -> None:
    b.norm(p + "in_layers.0", ch_in)
    b.conv(p + "in_layers.2", ch_out, ch_in, 3)
    b.linear(p + "emb_layers.1", ch_out, emb)
    b.norm(p + "out_layers.0", ch_out)
    b.conv(p + "out_layers.3", ch_out, ch_out, 3, gain=_GAIN_RESIDUAL_OUT)
    if ch_in != ch_out:
        b.conv(p + "skip_connection", ch_out, ch_in, 1)


def _spatial_transformer(b: _Builder, p: str, ch: int, depth: int, context_dim: int, use_linear: bool) -> None:
    b.norm(p + "norm", ch)
    if use_linear:
        b.linear(p + "proj_in", ch, ch)
    else:
        b.conv(p + "proj_in", ch, ch, 1)
    for d in range(depth):
        t = f"{p}transformer_blocks.{d}."
        for attn, kv_dim in (("attn1", ch), ("attn2", context_dim)):
            b.linear(f"{t}{attn}.to_q", ch, ch, bias=False)
            b.linear(f"{t}{attn}.to_k", ch, kv_dim, bias=False)
            b.linear(f"{t}{attn}.to_v", ch, kv_dim, bias=False)
            b.linear(f"{t}{attn}.to_out.0", ch, ch, gain=_GAIN_RESIDUAL_OUT)
        b.linear(f"{t}ff.net.0.proj", ch * 4 * 2, ch)  # GEGLU
        b.linear(f"{t}ff.net.2", ch, ch * 4, gain=_GAIN_RESIDUAL_OUT)
        for n in ("norm1", "norm2", "norm3"):
            b.norm(t + n, ch)
    if use_linear:
        b.linear(p + "proj_out", ch, ch, gain=_GAIN_RESIDUAL_OUT)
    else:
        b.conv(p + "proj_out", ch, ch, 1, gain=_GAIN_RESIDUAL_OUT)


def _unet_input_side(b: _Builder, prefix: str, spec: UNetSpec) -> tuple[list[int], int, int]:
    """time/label embeddings, input blocks and middle block; returns (input_block_chans, ch, n_input_blocks)."""
    mc = spec.model_channels
    emb = mc * 4
    b.linear(prefix + "time_embed.0", emb, mc)
    b.linear(prefix + "time_embed.2", emb, emb)
    if spec.adm_in_channels is not None:
        b.linear(prefix + "label_emb.0.0", emb, spec.adm_in_channels)
        b.linear(prefix + "label_emb.0.2", emb, emb)

    b.conv(prefix + "input_blocks.0.0", mc, spec.in_channels, 3)
    chans = [mc]
    ch = mc
    n = 1
    depths = list(spec.transformer_depth)
    for level, mult in enumerate(spec.channel_mult):
        for _ in range(spec.num_res_blocks[level]):
            p = f"{prefix}input_blocks.{n}."
            _resblock(b, p + "0.", ch, mult * mc, emb)
            ch = mult * mc
            depth = depths.pop(0)
            if depth > 0:
                _spatial_transformer(b, p + "1.", ch, depth, spec.context_dim, spec.use_linear_in_transformer)
            chans.append(ch)
            n += 1
        if level != len(spec.channel_mult) - 1:
            b.conv(f"{prefix}input_blocks.{n}.0.op", ch, ch, 3)
            chans.append(ch)
            n += 1

    if spec.transformer_depth_middle >= -1:
        _resblock(b, prefix + "middle_block.0.", ch, ch, emb)
        if spec.transformer_depth_middle >= 0:
            _spatial_transformer(b, prefix + "middle_block.1.", ch, spec.transformer_depth_middle,
                                 spec.context_dim, spec.use_linear_in_transformer)
            _resblock(b, prefix + "middle_block.2.", ch, ch, emb)
    return chans, ch, n


def _unet(b: _Builder, prefix: str, spec: UNetSpec) -> None:
    mc = spec.model_channels
    emb = mc * 4
    chans, ch, _ = _unet_input_side(b, prefix, spec)
    depths_out = list(spec.transformer_depth_output)
    n = 0
    for level in reversed(range(len(spec.channel_mult))):
        mult = spec.channel_mult[level]
        for i in range(spec.num_res_blocks[level] + 1):
            p = f"{prefix}output_blocks.{n}."
            ich = chans.pop()
            _resblock(b, p + "0.", ch + ich, mc * mult, emb)
            ch = mc * mult
            idx = 1
            depth = depths_out[n]
            if depth > 0:
                _spatial_transformer(b, p + "1.", ch, depth, spec.context_dim, spec.use_linear_in_transformer)
                idx = 2
            if level and i == spec.num_res_blocks[level]:
                b.conv(f"{p}{idx}.conv", ch, ch, 3)
            n += 1
    b.norm(prefix + "out.0", ch)
    b.conv(prefix + "out.2", spec.out_channels, mc, 3, gain=_GAIN_UNET_OUT)


# --------------------------------------------------------------------------------------------
# Text encoders
# --------------------------------------------------------------------------------------------

_VOCAB = 49408
_POSITIONS = 77


def _clip_l_hf(b: _Builder, p: str, position_ids: bool = True) -> None:
    """OpenAI CLIP ViT-L/14 text model in transformers layout (12 layers, width 768)."""
    width, layers, mlp = 768, 12, 3072
    b.normal(p + "embeddings.token_embedding.weight", (_VOCAB, width), 0.02)
    b.normal(p + "embeddings.position_embedding.weight", (_POSITIONS, width), 0.01)
    if position_ids:
        b.sd[p + "embeddings.position_ids"] = torch.arange(_POSITIONS, dtype=torch.int64)[None]
    for i in range(layers):
        q = f"{p}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj"):
            b.linear(f"{q}self_attn.{proj}", width, width)
        b.linear(f"{q}self_attn.out_proj", width, width, gain=_GAIN_RESIDUAL_OUT)
        b.norm(q + "layer_norm1", width)
        b.linear(q + "mlp.fc1", mlp, width)
        b.linear(q + "mlp.fc2", width, mlp, gain=_GAIN_RESIDUAL_OUT)
        b.norm(q + "layer_norm2", width)
    b.norm(p + "final_layer_norm", width)


def _clip_g_openclip(b: _Builder, p: str) -> None:
    """OpenCLIP ViT-bigG/14 text tower in open_clip layout (32 layers, width 1280), as in SDXL."""
    width, layers, mlp = 1280, 32, 5120
    b.normal(p + "token_embedding.weight", (_VOCAB, width), 0.02)
    b.normal(p + "positional_embedding", (_POSITIONS, width), 0.01)
    for i in range(layers):
        q = f"{p}transformer.resblocks.{i}."
        b.norm(q + "ln_1", width)
        b.normal(q + "attn.in_proj_weight", (3 * width, width), 1.0 / math.sqrt(width))
        b.normal(q + "attn.in_proj_bias", (3 * width,), _BIAS_STD)
        b.linear(q + "attn.out_proj", width, width, gain=_GAIN_RESIDUAL_OUT)
        b.norm(q + "ln_2", width)
        b.linear(q + "mlp.c_fc", mlp, width)
        b.linear(q + "mlp.c_proj", width, mlp, gain=_GAIN_RESIDUAL_OUT)
    b.norm(p + "ln_final", width)
    b.normal(p + "text_projection", (width, width), 1.0 / math.sqrt(width))
    b.const(p + "logit_scale", (), math.log(100.0))


# --------------------------------------------------------------------------------------------
# VAE (ldm AutoencoderKL, SD1.x/SDXL shapes: ch 128, ch_mult 1,2,4,4, 2 res blocks, z 4)
# --------------------------------------------------------------------------------------------

def _vae_resblock(b: _Builder, p: str, cin: int, cout: int) -> None:
    b.norm(p + "norm1", cin)
    b.conv(p + "conv1", cout, cin, 3)
    b.norm(p + "norm2", cout)
    b.conv(p + "conv2", cout, cout, 3, gain=_GAIN_RESIDUAL_OUT)
    if cin != cout:
        b.conv(p + "nin_shortcut", cout, cin, 1)


def _vae_attn(b: _Builder, p: str, ch: int) -> None:
    b.norm(p + "norm", ch)
    for n in ("q", "k", "v"):
        b.conv(p + n, ch, ch, 1)
    b.conv(p + "proj_out", ch, ch, 1, gain=_GAIN_RESIDUAL_OUT)


def _vae(b: _Builder, p: str) -> None:
    ch, ch_mult, nres, z = 128, (1, 2, 4, 4), 2, 4
    # encoder
    b.conv(p + "encoder.conv_in", ch, 3, 3)
    in_mult = (1,) + ch_mult
    block_in = ch
    for i, m in enumerate(ch_mult):
        block_in = ch * in_mult[i]
        block_out = ch * m
        for j in range(nres):
            _vae_resblock(b, f"{p}encoder.down.{i}.block.{j}.", block_in, block_out)
            block_in = block_out
        if i != len(ch_mult) - 1:
            b.conv(f"{p}encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    _vae_resblock(b, p + "encoder.mid.block_1.", block_in, block_in)
    _vae_attn(b, p + "encoder.mid.attn_1.", block_in)
    _vae_resblock(b, p + "encoder.mid.block_2.", block_in, block_in)
    b.norm(p + "encoder.norm_out", block_in)
    b.conv(p + "encoder.conv_out", 2 * z, block_in, 3)
    b.conv(p + "quant_conv", 2 * z, 2 * z, 1)
    # decoder
    b.conv(p + "post_quant_conv", z, z, 1)
    block_in = ch * ch_mult[-1]
    b.conv(p + "decoder.conv_in", block_in, z, 3)
    _vae_resblock(b, p + "decoder.mid.block_1.", block_in, block_in)
    _vae_attn(b, p + "decoder.mid.attn_1.", block_in)
    _vae_resblock(b, p + "decoder.mid.block_2.", block_in, block_in)
    for i in reversed(range(len(ch_mult))):
        block_out = ch * ch_mult[i]
        for j in range(nres + 1):
            _vae_resblock(b, f"{p}decoder.up.{i}.block.{j}.", block_in, block_out)
            block_in = block_out
        if i != 0:
            b.conv(f"{p}decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    b.norm(p + "decoder.norm_out", block_in)
    b.conv(p + "decoder.conv_out", 3, block_in, 3, gain=0.5)


# --------------------------------------------------------------------------------------------
# Public builders
# --------------------------------------------------------------------------------------------

def sd15_state_dict(seed: int = 0) -> Dict[str, torch.Tensor]:
    """State dict of the tiny SD1.5-format checkpoint (ldm keys)."""
    sd: Dict[str, torch.Tensor] = {}
    _unet(_Builder(seed, "sd15.unet", sd), "model.diffusion_model.", SD15_UNET)
    _clip_l_hf(_Builder(seed, "clip_l", sd), "cond_stage_model.transformer.text_model.")
    _vae(_Builder(seed, "vae", sd), "first_stage_model.")
    return sd


def sdxl_state_dict(seed: int = 0) -> Dict[str, torch.Tensor]:
    """State dict of the tiny SDXL-format checkpoint (SGM keys)."""
    sd: Dict[str, torch.Tensor] = {}
    _unet(_Builder(seed, "sdxl.unet", sd), "model.diffusion_model.", SDXL_UNET)
    _clip_l_hf(_Builder(seed, "clip_l", sd), "conditioner.embedders.0.transformer.text_model.")
    _clip_g_openclip(_Builder(seed, "clip_g", sd), "conditioner.embedders.1.model.")
    _vae(_Builder(seed, "vae", sd), "first_stage_model.")
    return sd


def controlnet_state_dict(seed: int = 0) -> Dict[str, torch.Tensor]:
    """ldm-format (``control_model.*``) ControlNet sized for the tiny SD1.5 UNet.

    Zero convs are random (not zero as at the start of training) so the control has an effect.
    """
    sd: Dict[str, torch.Tensor] = {}
    b = _Builder(seed, "sd15.controlnet", sd)
    p = "control_model."
    spec = SD15_UNET
    mc = spec.model_channels
    hint = [(16, 3), (16, 16), (32, 16), (32, 32), (96, 32), (96, 96), (256, 96), (mc, 256)]
    for i, (cout, cin) in enumerate(hint):
        b.conv(f"{p}input_hint_block.{2 * i}", cout, cin, 3)
    chans, ch, n_in = _unet_input_side(b, p, spec)
    for i, c in enumerate(chans):
        b.conv(f"{p}zero_convs.{i}.0", c, c, 1, gain=_GAIN_RESIDUAL_OUT)
    b.conv(p + "middle_block_out.0", ch, ch, 1, gain=_GAIN_RESIDUAL_OUT)
    return sd


def _metadata(kind: str, seed: int, arch: str) -> Dict[str, str]:
    return {
        "tiny_comfy.kind": kind,
        "tiny_comfy.seed": str(int(seed)),
        "tiny_comfy.version": str(VERSION),
        "modelspec.architecture": arch,
        "modelspec.title": f"tiny {kind} (seed {int(seed)}, random weights, tests only)",
    }


def _save_atomic(sd: Dict[str, torch.Tensor], path, metadata: Dict[str, str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        save_file(sd, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_sd15_checkpoint(path, seed: int = 0) -> Path:
    """Write the tiny SD1.5 checkpoint (~440 MB, mostly real-size CLIP-L and VAE)."""
    return _save_atomic(sd15_state_dict(seed), path, _metadata("sd15", seed, "stable-diffusion-v1"))


def write_sdxl_checkpoint(path, seed: int = 0) -> Path:
    """Write the tiny SDXL checkpoint (~2 GB, mostly the real-size OpenCLIP bigG text tower)."""
    return _save_atomic(sdxl_state_dict(seed), path, _metadata("sdxl", seed, "stable-diffusion-xl-v1-base"))


def write_controlnet(path, seed: int = 0) -> Path:
    """Write an ldm-format ControlNet for the tiny SD1.5 checkpoint (~10 MB)."""
    return _save_atomic(controlnet_state_dict(seed), path, _metadata("sd15_controlnet", seed, "stable-diffusion-v1/control"))


_WRITERS = {
    "sd15": write_sd15_checkpoint,
    "sdxl": write_sdxl_checkpoint,
    "sd15_controlnet": write_controlnet,
}
#: the kinds ``cached_checkpoint`` builds
KINDS = tuple(_WRITERS)
_ALIASES = {"controlnet": "sd15_controlnet", "sd1": "sd15", "sd1.5": "sd15"}


def cache_dir() -> Path:
    """``$KRONA_TEST_CACHE`` or ``~/.cache/comfyui-krona-tests`` (never inside the repo)."""
    env = os.environ.get("KRONA_TEST_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "comfyui-krona-tests"


def cached_checkpoint(kind: str, seed: int = 0) -> Path:
    """Path of the tiny ``kind`` file for ``seed``, built on first use and reused afterwards.

    ``kind`` is one of ``KINDS`` ("sd15", "sdxl", "sd15_controlnet"). Files are keyed by kind,
    seed and ``VERSION``; writes are atomic, so concurrent test workers are safe (at worst both
    build the same bytes).
    """
    kind = _ALIASES.get(kind, kind)
    if kind not in _WRITERS:
        raise ValueError(f"unknown tiny checkpoint kind {kind!r}; expected one of {KINDS}")
    path = cache_dir() / f"tiny-{kind}-seed{int(seed)}-v{VERSION}.safetensors"
    if not path.is_file():
        _WRITERS[kind](path, seed)
    return path

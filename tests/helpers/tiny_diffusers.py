"""A tiny diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""

from __future__ import annotations

import json
from pathlib import Path


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2 / CLIP)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_char_tokenizer(directory: Path) -> Path:
    """A real CLIPTokenizer vocabulary with one token per byte (no merges): loads offline."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = _byte_alphabet()
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return directory


def write_tiny_diffusers(directory: Path, seed: int = 0) -> Path:
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    from krona_core.tiny.pipeline import build_tiny_pipeline

    pipe = build_tiny_pipeline(seed)
    directory.mkdir(parents=True, exist_ok=True)
    pipe.unet.save_pretrained(directory / "unet")
    pipe.vae.save_pretrained(directory / "vae")
    pipe.text_encoder.save_pretrained(directory / "text_encoder")
    tokenizer_dir = write_char_tokenizer(directory / "tokenizer")
    tokenizer = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), model_max_length=16)
    tokenizer.save_pretrained(tokenizer_dir)
    DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                  beta_schedule="scaled_linear").save_pretrained(directory / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (directory / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return directory

"""Tiny seeded diffusers flow transformers (Flux.1, SD3) for the CLI trainer's tests: small widths,
built from configs, saved with save_pretrained as a pipeline folder (transformer/, vae/)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F

PROMPT = "a photo of sks toy"
CONFIGS = {
    "flux1": ("FluxTransformer2DModel", dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                             pooled_projection_dim=12, guidance_embeds=True, axes_dims_rope=(4, 6, 6))),
    "sd3": ("SD3Transformer2DModel", dict(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                          caption_projection_dim=32, pooled_projection_dim=12, pos_embed_max_size=16)),
}
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
           latent_channels=16, norm_num_groups=4, sample_size=64, scaling_factor=0.3611, shift_factor=0.1159)


def transformer(family: str, seed: int = 0) -> torch.nn.Module:
    import diffusers

    name, config = CONFIGS[family]
    torch.manual_seed(seed)
    return getattr(diffusers, name)(**config)


def embeddings(seed: int = 3, prompts=(PROMPT, "")) -> dict:
    """{prompt: conditioning} of random but fixed embeddings (the tiny models' 'text encoder')."""
    g = torch.Generator().manual_seed(seed)
    return {p: {"encoder_hidden_states": torch.randn(1, 6, 24, generator=g), "pooled_projections": torch.randn(1, 12, generator=g)}
            for p in prompts}


def latents(n: int, seed: int = 3) -> torch.Tensor:
    """Smooth random latents (16, 8, 8): a dataset the tiny transformer can fit."""
    return F.interpolate(torch.randn(n, 16, 4, 4, generator=torch.Generator().manual_seed(seed)), size=(8, 8), mode="bilinear")


def write_pipeline(folder: Path, family: str, seed: int = 0, vae: bool = True) -> Path:
    """A diffusers pipeline folder with transformer/ (and a tiny 16-channel vae/)."""
    from diffusers import AutoencoderKL

    folder.mkdir(parents=True, exist_ok=True)
    model = transformer(family, seed)
    model.save_pretrained(folder / "transformer")
    index = {"_class_name": "FluxPipeline" if family == "flux1" else "StableDiffusion3Pipeline",
             "transformer": ["diffusers", CONFIGS[family][0]]}
    if vae:
        torch.manual_seed(seed + 1)
        AutoencoderKL(**VAE).save_pretrained(folder / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def copy_of(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


#: tiny text encoders whose outputs fit the tiny transformers (joint_attention_dim 24, pooled 12):
#: FLUX.1 CLIP-L (pooled 12) + T5 (24); SD3 CLIP-L (hidden 8, projection 4) + CLIP-G (8, 8) + T5 (24)
CLIP = dict(vocab_size=514, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
            bos_token_id=512, eos_token_id=513, pad_token_id=513)
T5 = dict(vocab_size=99, d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0,
          pad_token_id=0, eos_token_id=1)
TEXT_ENCODERS = {
    "flux1": (("text_encoder", "CLIPTextModel", dict(hidden_size=12)), ("text_encoder_2", "T5EncoderModel", {})),
    "sd3": (("text_encoder", "CLIPTextModelWithProjection", dict(hidden_size=8, projection_dim=4)),
            ("text_encoder_2", "CLIPTextModelWithProjection", dict(hidden_size=8, projection_dim=8)),
            ("text_encoder_3", "T5EncoderModel", {})),
}


def _t5_tokenizer(folder: Path) -> None:
    """A T5 tokenizer built offline: a unigram vocabulary of printable ASCII characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(chr(c), -1.0) for c in range(32, 127)] + [("▁", -1.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                    extra_ids=0).save_pretrained(folder)


def write_text_encoders(folder: Path, family: str, seed: int = 0) -> Path:
    """Add the family's tiny seeded text encoders and tokenizers to a pipeline folder (its model_index.json)."""
    import transformers

    from .tiny_diffusers import write_char_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {
        "_class_name": "FluxPipeline" if family == "flux1" else "StableDiffusion3Pipeline"}
    torch.manual_seed(seed + 7)
    for name, cls, extra in TEXT_ENCODERS[family]:
        tokenizer = folder / name.replace("text_encoder", "tokenizer")
        if cls == "T5EncoderModel":
            model = transformers.T5EncoderModel(transformers.T5Config(**T5))
            _t5_tokenizer(tokenizer)
            index[tokenizer.name] = ["transformers", "T5TokenizerFast"]
        else:
            model = getattr(transformers, cls)(transformers.CLIPTextConfig(**CLIP, **extra))
            write_char_tokenizer(tokenizer)
            transformers.CLIPTokenizer(str(tokenizer / "vocab.json"), str(tokenizer / "merges.txt"),
                                       model_max_length=77).save_pretrained(tokenizer)
            index[tokenizer.name] = ["transformers", "CLIPTokenizer"]
        model.save_pretrained(folder / name)
        index[name] = ["transformers", cls]
    index_path.write_text(json.dumps(index))
    return folder


def cli_train_args(folder: Path, steps: int = 6) -> list[str]:
    """`-m krona_core train …` arguments for a tiny FLUX.1 run of the CLI, with what it reads written
    under `folder`: the pipeline, two subject images and the embeddings file (argument 6)."""
    from krona_core.train.embeddings import save_embeddings

    from .subject_images import write_subject_pngs

    base = write_pipeline(folder / "tiny-flux", "flux1")
    images = folder / "images"
    images.mkdir()
    write_subject_pngs(images, 2, 64, seed=4, stem="img")
    table = save_embeddings(folder / "emb.safetensors", embeddings())
    return ["-m", "krona_core", "train", "--base", str(base), "--embeddings", table, "--images", str(images),
            "--instance-prompt", PROMPT, "--steps", str(steps), "--grad-accum", "1", "--a1", "4", "--a2", "4",
            "--resolution", "64", "--device", "cpu", "--lr", "1e-2", "--gradient-checkpointing"]

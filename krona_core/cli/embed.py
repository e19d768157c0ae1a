"""`python -m krona_core embed`: the text-embeddings file a flow-transformer training run reads
(`train --embeddings`), written by a FLUX.1 or SD3 / SD3.5 pipeline folder's own text encoders,
offline. Given the training run's dataset and prompt arguments it writes every prompt that run
encodes (the rule `train` checks the file against), plus any prompts listed."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .args import DTYPE_NAMES, UsageError, int_range, torch_dtype


def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", required=True, help="diffusers FLUX.1 or SD3 / SD3.5 pipeline folder with its text "
                   "encoders and tokenizers (transformer/ and vae/ are not loaded)")
    p.add_argument("--out", required=True, help="the embeddings .safetensors to write (never overwritten unless --overwrite)")
    p.add_argument("--images", default=None, help="the training run's dataset folder: its captions (and the instance "
                   "prompt for images without one)")
    p.add_argument("--instance-prompt", default=None, help="the training run's instance prompt")
    p.add_argument("--class-prompt", default=None, help="the training run's class prompt (prior preservation)")
    p.add_argument("--validation-prompt", default=None, help="the training run's preview prompt (default: the instance "
                   "prompt; previews, class images and caption dropout also need \"\", always written)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt to embed (repeatable)")
    p.add_argument("--prompts-file", default=None, help="a UTF-8 text file of prompts, one per line (blank lines skipped)")
    p.add_argument("--max-sequence-length", type=int_range(1, 512), default=None,
                   help="T5 tokens per prompt (default: the pipeline's, FLUX.1 512, SD3 256)")
    p.add_argument("--dtype", choices=["auto", *DTYPE_NAMES], default="auto",
                   help="the text encoders' dtype (auto: bf16 on CUDA, fp32 on the CPU); the file stores float32")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def prompts_of(args: argparse.Namespace) -> list[str]:
    """The prompts to embed, in order, each once (a UsageError when the arguments give none)."""
    from ..train.dataset import dataset_captions
    from ..train.embeddings import training_prompts

    if args.images and not args.instance_prompt:
        raise UsageError("--images needs --instance-prompt (the caption of images without one), as train does")
    prompts: list[str] = []
    if args.instance_prompt:
        captions = [caption for _, _, caption, _ in dataset_captions(args.images)] if args.images else []
        prompts += training_prompts(captions, args.instance_prompt, args.class_prompt or "", args.validation_prompt,
                                    previews=True, dropout=True)
    elif args.class_prompt or args.validation_prompt:
        raise UsageError("--class-prompt and --validation-prompt belong to a training run: give its --instance-prompt")
    prompts += args.prompt
    if args.prompts_file:
        try:
            lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ValueError(f"--prompts-file {args.prompts_file}: not UTF-8 text") from None
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UsageError("no prompts: give --instance-prompt (with --images), --prompt or --prompts-file")
    return list(dict.fromkeys(prompts))


def _check_out(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {args.out}: the embeddings file must end with .safetensors")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} exists; choose another name or pass --overwrite")
    if not out.parent.resolve().is_dir():
        raise ValueError(f"{args.out}: its folder does not exist")
    if not os.path.isdir(args.pipeline):
        raise ValueError(f"--pipeline {args.pipeline}: no such folder (a diffusers FLUX.1 or SD3 pipeline folder)")


def run_embed(args: argparse.Namespace) -> int:
    import torch

    from ..train.embeddings import save_embeddings
    from ..train.prompt_encoding import encode_prompts, load_text_pipeline
    from ..util.progress import ProgressPrinter

    _check_out(args)
    prompts = prompts_of(args)  # before loading any model: nothing is lost to a bad argument
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available to this torch ({torch.__version__})")
    name = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    family, pipe = load_text_pipeline(args.pipeline, str(device), torch_dtype(name))
    bar = ProgressPrinter(len(prompts), f"embedding prompts ({family.title})", unit="prompt")
    try:
        conds = encode_prompts(family, pipe, prompts, args.max_sequence_length, bar.advance)
    finally:
        bar.close()
    path = save_embeddings(args.out, conds, overwrite=args.overwrite)
    shapes = {k: tuple(v.shape[1:]) for k, v in next(iter(conds.values())).items()}
    print(f"saved {path}: {len(conds)} prompt(s), {family.title} text encoders, "
          + ", ".join(f"{k} {'×'.join(map(str, s))}" for k, s in shapes.items()))
    return 0

"""`python -m krona_core eval` (the world metrics of a base, and of an adapter on it) and
`python -m krona_core pretrain-world` (reproduce the shipped world base)."""

from __future__ import annotations

import argparse
import json
import time

import torch

from .args import UsageError, non_negative, positive


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default=None, help="world base .safetensors (default: the shipped one)")
    parser.add_argument("--adapter", default=None, help="a .krona.safetensors (or LoRA/LoKr) file trained on the world's "
                                                        "personalisation task: its subject / prompt fidelity and prior")
    parser.add_argument("--samples", type=positive, default=120, help="held-out captions generated for prompt following")
    parser.add_argument("--seed", type=non_negative, default=0, help="random seed (default 0)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    real = parser.add_argument_group("the paper's scores on real generations (CLIP / DINO weights on disk)")
    real.add_argument("--images", help="folder of generated images (scored instead of the world)")
    real.add_argument("--references", help="folder of the subject's reference images")
    real.add_argument("--prompts", help="text file, one prompt per generated image in file-name order")
    real.add_argument("--clip", help="a local CLIP model folder (transformers CLIPModel + tokenizer): CLIP-I, CLIP-T")
    real.add_argument("--dino", help="a local DINO ViT folder (transformers ViTModel): DINO")


def run_real_eval(args: argparse.Namespace) -> int:
    from ..eval.clip import clip_scores, dino_score
    from ..util.images import load_folder

    if not args.references or not (args.clip or args.dino):
        raise UsageError("--images needs --references and --clip and/or --dino (local model folders)")
    images = [img for _, img in load_folder(args.images)]
    refs = [img for _, img in load_folder(args.references)]
    scores: dict[str, float] = {}
    if args.clip:
        if not args.prompts:
            raise FileNotFoundError("--clip needs --prompts (one line per generated image)")
        with open(args.prompts, encoding="utf-8") as fh:
            prompts = [line.strip() for line in fh if line.strip()]
        scores.update(clip_scores(args.clip, images, refs, prompts))
    if args.dino:
        scores["dino"] = dino_score(args.dino, images, refs)
    print(json.dumps(scores, indent=2) if args.json else "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..adapters.apply import apply
    from ..eval.world_metrics import prompt_following, subject_scores
    from ..world import model as world_model

    if args.images:
        return run_real_eval(args)
    base, recipe = world_model.load(args.base or world_model.WEIGHTS)
    denoiser = base.denoiser()
    report: dict = {"base": str(args.base or world_model.WEIGHTS), "pretraining": recipe,
                    "prompt_following": prompt_following(denoiser, args.samples, args.seed)}
    if args.adapter:
        report["subject_base"] = subject_scores(denoiser, seed=args.seed).as_dict()
        handle = apply(base.unet, args.adapter)
        try:
            report["subject_adapted"] = subject_scores(denoiser, seed=args.seed).as_dict()
        finally:
            handle.remove()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    follow = report["prompt_following"]
    print(f"world base {report['base']}: prompt following on {args.samples} held-out captions")
    print("  " + ", ".join(f"{k} {v:.0%}" for k, v in follow.items()))
    if args.adapter:
        print(f"adapter {args.adapter} on the personalisation task (base → adapted):")
        for key, before in report["subject_base"].items():
            print(f"  {key:<20} {before:7.3f} → {report['subject_adapted'][key]:7.3f}")
    return 0


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="where to write the base (.safetensors)")
    parser.add_argument("--seed", type=non_negative, default=0, help="random seed of the world and the training (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run_pretrain(args: argparse.Namespace) -> int:
    from ..eval.world_metrics import prompt_following
    from ..world import model as world_model
    from ..world.pretrain import Recipe, pretrain

    started = time.perf_counter()
    pretrain(args.out, Recipe(seed=args.seed), overwrite=args.overwrite)
    base, recipe = world_model.load(args.out)
    follow = prompt_following(base.denoiser(), seed=args.seed)
    world_model.save(base, args.out, {**recipe, "prompt_following": follow}, overwrite=True)
    print(f"pretrained in {time.perf_counter() - started:.0f} s on {torch.get_num_threads()} CPU threads "
          f"(or the GPU); prompt following on held-out captions: " + ", ".join(f"{k} {v:.0%}" for k, v in follow.items()))
    return 0

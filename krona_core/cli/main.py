"""Command line: `python -m krona_core <command>`.

Every refused input exits non-zero with a one-line reason (no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from ..convert.errors import ConvertError
from ..families import FamilyError
from .. import families
from ..files.model import SUFFIX, KronAFileError
from ..files.reader import read
from ..naming.kohya import KeyMapError
from ..train.diffusers_backend import BaseLoadError
from ..train.job import JobError


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, steps=args.steps, seed=args.seed)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if not args.file.endswith(SUFFIX):
        return _info_other(args)
    file = read(args.file)
    if args.json:
        shapes = {k: s.to_json() + list(s.kernel) for k, s in file.shapes().items()}
        print(json.dumps({"metadata": file.metadata, "modules": shapes}, indent=2))
        return 0
    meta = file.metadata
    print(f"file:           {file.path}")
    print(f"base model:     {file.base_model or 'unknown'}")
    print(f"trigger words:  {', '.join(file.trigger_words) or '(none)'}")
    print(f"networks:       {', '.join(file.networks())}")
    print(f"modules:        {len(file.modules)}  ({file.num_parameters():,} parameters)")
    if file.training:
        print(f"training:       {json.dumps(file.training, sort_keys=True)}")
    print(f"format version: {meta.get('krona.format_version', '(plain LoKr file)')}")
    print("\nmetadata:")
    for key in sorted(meta):
        if key in ("krona.factors", "ss_tag_frequency"):
            continue
        value = meta[key] if len(meta[key]) < 100 else meta[key][:97] + "..."
        print(f"  {key} = {value}")
    print()
    name_width = min(max(len(k) for k in file.modules), 80)
    print(f"{'module':<{name_width}}  {'w1':>10}  {'w2':>14}  {'|w1|':>9}  {'|w2|':>9}  {'|dW|':>9}")
    for key in sorted(file.modules):
        w1, w2 = file.modules[key]
        n1, n2 = float(w1.float().norm()), float(w2.float().norm())
        # ‖A ⊗ B‖_F = ‖A‖_F · ‖B‖_F: the ΔW norm without materialising it
        shape2 = "×".join(str(d) for d in w2.shape)
        print(f"{key[:name_width]:<{name_width}}  {'×'.join(map(str, w1.shape)):>10}  {shape2:>14}  "
              f"{n1:9.4f}  {n2:9.4f}  {n1 * n2:9.4f}")
    total = math.sqrt(sum((float(w1.float().norm()) * float(w2.float().norm())) ** 2 for w1, w2 in file.modules.values()))
    print(f"\ntotal ΔW norm (Frobenius over all modules): {total:.4f}")
    return 0


def _info_other(args: argparse.Namespace) -> int:
    """Any adapter file `convert` reads: LoKr of every trainer, LoRA, LyCORIS full, official."""
    from ..convert.describe import describe_source, module_rows
    from ..convert.sources import read_source

    source = read_source(args.file, args.base)
    if args.json:
        print(json.dumps({"format": source.format, "base": source.base, "metadata": source.metadata,
                          "modules": module_rows(source)}, indent=2))
    else:
        print(describe_source(source))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import run_train

    return run_train(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m krona_core", description="KronA (Kronecker-product) adapters for diffusion models")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="personalise the embedded world base with KronA: train, grid + metrics, save, reload and check")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: the task recipe's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    from .train import add_train_arguments

    train = sub.add_parser("train", help="DreamBooth-train a KronA adapter on a local base model (diffusers folder or single file)")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    from .convert import add_convert_arguments, add_merge_arguments, run_convert, run_merge

    convert = sub.add_parser("convert", help="convert between KronA, LyCORIS LoKr, LoRA and official DiffuseKronA files")
    add_convert_arguments(convert)
    convert.set_defaults(func=run_convert)

    merge = sub.add_parser("merge", help="merge KronA files into one, or bake one into a checkpoint")
    add_merge_arguments(merge)
    merge.set_defaults(func=run_merge)

    from .world import add_eval_arguments, add_pretrain_arguments, run_eval, run_pretrain

    evaluate = sub.add_parser("eval", help="prompt following of the world base, and subject / prompt fidelity and prior "
                                           "preservation of an adapter trained on its personalisation task")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=run_eval)

    pretrain = sub.add_parser("pretrain-world", help="reproduce the shipped world base from a seed (GPU when there is one)")
    add_pretrain_arguments(pretrain)
    pretrain.set_defaults(func=run_pretrain)

    info = sub.add_parser("info", help="metadata and per-layer table of a .krona.safetensors file, or format and "
                                       "module kinds of any adapter file `convert` reads")
    info.add_argument("file")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--base", choices=families.names(), default=None,
                      help="base model of a non-KronA file when it cannot be detected")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly (Python's documented recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (KronAFileError, BaseLoadError, ConvertError, KeyMapError, FamilyError, JobError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

"""Command line: `python -m krona_core <command>` (or `krona <command>`).

Exit status: 0 done, 2 a usage error (unknown flag, bad number: one line from the parser),
1 refused input (a bad file, a missing folder, an unreadable path: one line `krona: error: …`),
130 cancelled. No traceback reaches the user; KRONA_TRACEBACK=1 shows one for a bug report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .. import families
from ..files.model import SUFFIX
from ..files.reader import read
from ..util.text import printable
from .args import PROG, REFUSED, USAGE_ERROR, Parser, UsageError, non_negative, positive


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, steps=args.steps, seed=args.seed)
    return 0


def _say(line: str = "") -> None:
    print(printable(line))


def cmd_info(args: argparse.Namespace) -> int:
    if not args.file.endswith(SUFFIX):
        return _info_other(args)
    file = read(args.file)
    if args.json:  # JSON escapes control characters itself
        shapes = {k: s.to_json() + list(s.kernel) for k, s in file.shapes().items()}
        print(json.dumps({"metadata": file.metadata, "modules": shapes}, indent=2))
        return 0
    meta = file.metadata
    _say(f"file:           {file.path}")
    _say(f"base model:     {file.base_model or 'unknown'}")
    _say(f"trigger words:  {', '.join(file.trigger_words) or '(none)'}")
    _say(f"networks:       {', '.join(file.networks())}")
    _say(f"modules:        {len(file.modules)}  ({file.num_parameters():,} parameters)")
    if file.training:
        _say(f"training:       {json.dumps(file.training, sort_keys=True)}")
    _say(f"format version: {meta.get('krona.format_version', '(plain LoKr file)')}")
    _say()
    _say("metadata:")
    for key in sorted(meta):
        if key in ("krona.factors", "ss_tag_frequency"):
            continue
        value = meta[key] if len(meta[key]) < 100 else meta[key][:97] + "..."
        _say(f"  {key} = {value}")
    _say()
    name_width = min(max(len(k) for k in file.modules), 80)
    _say(f"{'module':<{name_width}}  {'w1':>10}  {'w2':>14}  {'|w1|':>9}  {'|w2|':>9}  {'|dW|':>9}")
    for key in sorted(file.modules):
        w1, w2 = file.modules[key]
        n1, n2 = float(w1.float().norm()), float(w2.float().norm())
        # ‖A ⊗ B‖_F = ‖A‖_F · ‖B‖_F: the ΔW norm without materialising it
        shape2 = "×".join(str(d) for d in w2.shape)
        _say(f"{key[:name_width]:<{name_width}}  {'×'.join(map(str, w1.shape)):>10}  {shape2:>14}  "
             f"{n1:9.4f}  {n2:9.4f}  {n1 * n2:9.4f}")
    total = math.sqrt(sum((float(w1.float().norm()) * float(w2.float().norm())) ** 2 for w1, w2 in file.modules.values()))
    _say()
    _say(f"total ΔW norm (Frobenius over all modules): {total:.4f}")
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
        for line in describe_source(source).splitlines():
            _say(line)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import run_train

    return run_train(args)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="KronA (Kronecker-product) adapters for diffusion models "
                                           "(also run as `python -m krona_core`)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="personalise the embedded world base with KronA: train, grid + metrics, save, reload and check")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--steps", type=positive, default=None, help="training steps (default: the task recipe's)")
    demo.add_argument("--seed", type=non_negative, default=0, help="random seed (default 0)")
    demo.set_defaults(func=cmd_demo)

    from .train import add_train_arguments

    train = sub.add_parser("train", help="DreamBooth-train a KronA adapter on a local base model (diffusers folder or single file)")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    from .embed import add_embed_arguments, run_embed

    embed = sub.add_parser("embed", help="write the text embeddings a FLUX.1 / SD3 training run reads (train --embeddings) "
                                         "with a pipeline folder's own text encoders")
    add_embed_arguments(embed)
    embed.set_defaults(func=run_embed)

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
    info.add_argument("file", help="a .krona.safetensors file, or any adapter file `convert` reads")
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
        return REFUSED
    except UsageError as exc:
        return _fail(str(exc), USAGE_ERROR)
    except ModuleNotFoundError as exc:
        return _fail(f"{exc.name} is not installed; the trainer needs the optional extra: "
                     "pip install 'comfyui-krona[train]' (or pip install -r requirements-train.txt)")
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except ValueError as exc:  # the pack's refusals (KronAFileError, ConvertError, JobError, …)
        return _fail(str(exc))
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("KRONA_TRACEBACK"):
            raise
        return _fail(f"unexpected {type(exc).__name__}: {exc} (a bug: please report it; KRONA_TRACEBACK=1 shows "
                     "the traceback)")


def _fail(message: str, status: int = REFUSED) -> int:
    lines = [line for line in str(message).splitlines() if line.strip()] or ["failed"]
    print(f"{PROG}: error: {printable(' '.join(lines))}", file=sys.stderr)
    return status

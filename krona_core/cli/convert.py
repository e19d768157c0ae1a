"""`python -m krona_core convert` and `merge`."""

from __future__ import annotations

import argparse
import os

import torch

from .. import families
from .args import UsageError, factor, finite, float_list, positive


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="KronA, LyCORIS LoKr, kohya/ComfyUI/diffusers-PEFT LoRA or official DiffuseKronA .safetensors")
    p.add_argument("dst", help="output file; *.krona.safetensors → KronA, otherwise see --to")
    p.add_argument("--to", choices=["krona", "lora", "diff"], default=None,
                   help="krona (default for *.krona.safetensors), lora (kohya LoRA), diff (materialised ΔW, LyCORIS 'full')")
    p.add_argument("--a1", type=factor, default=64, help="rows of the w1 factor for modules fitted by nearest Kronecker "
                   "product (1 … 4096; the nearest divisor of each layer is used and reported)")
    p.add_argument("--a2", type=factor, default=8, help="columns of the w1 factor (1 … 4096)")
    p.add_argument("--budget", type=positive, default=None, help="total KronA parameters; per-layer shapes chosen by least error")
    p.add_argument("--rank", type=positive, default=None, help="LoRA rank for --to lora, ≥ 1 (default: exact rank)")
    p.add_argument("--base", choices=families.names(), default=None, help="base model when it cannot be detected")
    p.add_argument("--float32", action="store_true", help="store float32 (default float16)")
    p.add_argument("--checkpoint", default=None,
                   help="single-file base checkpoint: DoRA-LoKr modules are converted as they act on its weights")


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="KronA files (several: merged into one KronA file); with --checkpoint "
                                            "one file, KronA or any adapter file `convert` reads")
    p.add_argument("--out", required=True, help="output: a .krona.safetensors, or a checkpoint file / diffusers folder with --checkpoint")
    p.add_argument("--weights", type=float_list, default=None, help="comma-separated finite weight per input (default 1 each)")
    p.add_argument("--checkpoint", default=None, help="bake one KronA file into this single-file checkpoint or diffusers folder")
    p.add_argument("--strength", type=finite, default=1.0, help="scale of ΔW baked with --checkpoint (finite; default 1)")
    p.add_argument("--a1", type=factor, default=None, help="w1 rows of modules several files share (default: the first file's)")
    p.add_argument("--a2", type=factor, default=None, help="w1 columns of modules several files share (default: the first file's)")
    p.add_argument("--float32", action="store_true", help="store float32 (default float16)")


class _ModuleBar:
    """A progress bar over modules, opened at the first callback (work that never calls shows none)."""

    def __init__(self, label: str):
        self.label, self.bar = label, None

    def __call__(self, done: int, total: int, name: str) -> None:
        from ..util.progress import ProgressPrinter

        if self.bar is None:
            self.bar = ProgressPrinter(total, self.label, unit="module")
        self.bar.advance(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_convert(args: argparse.Namespace) -> int:
    from ..convert.convert import convert_file

    bar = _ModuleBar("converting")
    try:
        report = convert_file(args.src, args.dst, args.to, args.a1, args.a2, args.budget, args.rank, args.base,
                              args.float32, args.checkpoint, progress=bar)
    finally:
        bar.close()
    print(report.text)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..convert.convert import Report, check_output
    from ..convert.merge import checkpoint_naming, merge_files, merge_into_checkpoint, merge_into_diffusers
    from ..convert.sources import read_source
    from ..files.model import SUFFIX
    from ..files.reader import read
    from ..files.writer import write

    if args.checkpoint:
        if len(args.inputs) != 1:
            raise UsageError("--checkpoint bakes exactly one adapter file; merge several first")
        bar = _ModuleBar("baking into the checkpoint")
        try:
            if os.path.isdir(args.checkpoint):
                info = merge_into_diffusers(args.checkpoint, read(args.inputs[0]), args.strength, args.out, progress=bar)
            else:
                src = args.inputs[0]
                adapter = read(src) if src.endswith(SUFFIX) else read_source(src, *checkpoint_naming(args.checkpoint))
                info = merge_into_checkpoint(args.checkpoint, adapter, args.strength, args.out, progress=bar)
        finally:
            bar.close()
        print(f"wrote {args.out}: {info['modules']} modules baked at strength {args.strength:g}")
        return 0
    if not args.out.endswith(SUFFIX):
        raise UsageError(f"--out must end with {SUFFIX}")
    if args.weights is not None and len(args.weights) != len(args.inputs):
        raise UsageError(f"--weights gives {len(args.weights)} weights for {len(args.inputs)} files")
    check_output(args.out)
    files = [read(p) for p in args.inputs]
    weights = args.weights or [1.0] * len(files)
    bar = _ModuleBar("merging")
    try:
        result = merge_files(files, weights, args.a1, args.a2, progress=bar)
    finally:
        bar.close()
    write(args.out, result.file.modules, result.file.metadata, dtype=torch.float32 if args.float32 else torch.float16)
    report = Report(args.out)
    report.error_lines(result.errors, result.total_error)
    report.factor_line(result.file.modules, (args.a1, args.a2) if args.a1 and args.a2 else None)
    print(report.text)
    print(f"wrote {args.out}")
    return 0

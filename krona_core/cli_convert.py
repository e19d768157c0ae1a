"""`python -m krona_core convert` and `merge`."""

from __future__ import annotations

import argparse
import os

import torch


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="KronA, LyCORIS LoKr, kohya/ComfyUI/diffusers-PEFT LoRA or official DiffuseKronA .safetensors")
    p.add_argument("dst", help="output file; *.krona.safetensors → KronA, otherwise see --to")
    p.add_argument("--to", choices=["krona", "lora", "diff"], default=None,
                   help="krona (default for *.krona.safetensors), lora (kohya LoRA), diff (materialised ΔW, LyCORIS 'full')")
    p.add_argument("--a1", type=int, default=64)
    p.add_argument("--a2", type=int, default=8)
    p.add_argument("--budget", type=int, default=None, help="total KronA parameters; per-layer shapes chosen by least error")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank for --to lora (default: exact rank)")
    p.add_argument("--base", choices=["sd1", "sd2", "sdxl"], default=None, help="base model when it cannot be detected")
    p.add_argument("--float32", action="store_true", help="store float32 (default float16)")


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="KronA files (several: merged into one KronA file)")
    p.add_argument("--out", required=True, help="output: a .krona.safetensors, or a checkpoint file / diffusers folder with --checkpoint")
    p.add_argument("--weights", default=None, help="comma-separated weight per input (default 1 each)")
    p.add_argument("--checkpoint", default=None, help="bake one KronA file into this single-file checkpoint or diffusers folder")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--a1", type=int, default=None)
    p.add_argument("--a2", type=int, default=None)
    p.add_argument("--float32", action="store_true")


def _report(errors: dict[str, float], total: float) -> None:
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    print(f"relative error: total {total:.3e}, max layer {max(errors.values(), default=0.0):.3e} over {len(errors)} modules")
    for name, err in worst:
        if err > 0:
            print(f"  {err:.3e}  {name}")


def run_convert(args: argparse.Namespace) -> int:
    from .convert import read_source, to_krona, to_lora
    from .format import SUFFIX, write
    from .merge import _atomic_write_safetensors

    target = args.to or ("krona" if args.dst.endswith(SUFFIX) else None)
    if target is None:
        raise SystemExit(f"error: {args.dst}: pass --to krona|lora|diff (or name the output *{SUFFIX})")
    if os.path.exists(args.dst):
        raise SystemExit(f"error: {args.dst} exists; nothing was overwritten")
    dtype = torch.float32 if args.float32 else torch.float16
    source = read_source(args.src, args.base)
    print(f"{args.src}: {source.format}, base {source.base or 'unknown'}, {len(source.modules)} modules")
    if target == "krona":
        result = to_krona(source, args.a1, args.a2, args.budget)
        write(args.dst, result.file.modules, result.file.metadata, dtype=dtype)
        _report(result.errors, result.total_error)
        print(f"wrote {args.dst}: {result.file.num_parameters():,} parameters")
    elif target == "lora":
        tensors, errors, total = to_lora(source, args.rank)
        meta = {"ss_network_module": "networks.lora", "krona.provenance": f'{{"source_sha256": "{source.sha256}", "source_format": "{source.format}"}}'}
        if source.base:
            meta["krona.base_model"] = source.base
        _atomic_write_safetensors({k: v.to(dtype) for k, v in tensors.items()}, meta, args.dst)
        _report(errors, total)
        ranks = sorted({v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")})
        print(f"wrote {args.dst}: LoRA ranks {ranks[0]}…{ranks[-1]}")
    else:
        tensors = {f"{name}.diff": module.dense().to(dtype).contiguous() for name, module in source.modules.items()}
        _atomic_write_safetensors(tensors, {"ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "full"}'}, args.dst)
        print(f"wrote {args.dst}: exact ΔW of {len(tensors)} modules")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from .format import SUFFIX, read, write
    from .merge import merge_files, merge_into_checkpoint, merge_into_diffusers

    files = [read(p) for p in args.inputs]
    if args.checkpoint:
        if len(files) != 1:
            raise SystemExit("error: --checkpoint bakes exactly one KronA file; merge several first")
        if os.path.isdir(args.checkpoint):
            info = merge_into_diffusers(args.checkpoint, files[0], args.strength, args.out)
        else:
            info = merge_into_checkpoint(args.checkpoint, files[0], args.strength, args.out)
        print(f"wrote {args.out}: {info['modules']} modules baked at strength {args.strength:g}")
        return 0
    if not args.out.endswith(SUFFIX):
        raise SystemExit(f"error: --out must end with {SUFFIX}")
    weights = [float(w) for w in args.weights.split(",")] if args.weights else [1.0] * len(files)
    result = merge_files(files, weights, args.a1, args.a2)
    write(args.out, result.file.modules, result.file.metadata, dtype=torch.float32 if args.float32 else torch.float16)
    _report(result.errors, result.total_error)
    print(f"wrote {args.out}")
    return 0

"""KronA on the flow-matching transformers' blocks: one real-size Flux.1 double block and one SD3.5
Large joint block (diffusers classes, random init, fp32), train step of KronA vs PEFT LoRA r16 vs
LyCORIS LoKr (default and bypass), peak memory and parameters, interleaved in one run.

    python bench/flow_blocks.py            # writes bench/FLOW_BLOCKS.md and bench/flow_blocks.json
    python bench/flow_blocks.py --quick    # narrow blocks, one round, FLOW_BLOCKS-quick.md: every code path in seconds

Every adapter goes on the same modules: the attention projections of both streams (image and text:
to_q/k/v/out and add_q/k/v_proj/to_add_out), the paper's default carried over to joint attention.
A step is forward + backward + AdamW on the adapter only (the input takes a gradient too, so the
no-adapter floor back-propagates through the same block); targets are ratios within this run.

Timing: each round runs every configuration back to back, `--repeats` steps each, and keeps a
configuration's fastest step of the round. A target is the median over rounds of the ratio taken
WITHIN each round (KronA's and its peer's steps of the same round, seconds apart), with the spread
of those per-round ratios. On a CPU the clock is the process's CPU time on one thread (`--clock
cpu`, the default there): the work a step does, unaffected by other jobs on a shared machine, which
stretch wall time by whatever they take; on CUDA, or with `--clock wall`, wall time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path
from typing import Callable

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from run import DEVICE, Attached, adapter, cpu_timed, lycoris, peak_memory, peft_lora, ratio, summary, timed  # noqa: E402

from krona_core import attach  # noqa: E402

#: joint attention projections of both streams, as diffusers names them in Flux and SD3 blocks
ATTN = r"re:(^|\.)attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)$"
PEFT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def flux_double_block(quick: bool) -> tuple[torch.nn.Module, int]:
    from diffusers.models.transformers.transformer_flux import FluxTransformerBlock

    heads, head_dim = (2, 32) if quick else (24, 128)  # Flux.1 dev / schnell: 3072 wide
    return FluxTransformerBlock(dim=heads * head_dim, num_attention_heads=heads, attention_head_dim=head_dim), heads * head_dim


def sd35_joint_block(quick: bool) -> tuple[torch.nn.Module, int]:
    from diffusers.models.attention import JointTransformerBlock

    heads, head_dim = (2, 32) if quick else (38, 64)  # SD3.5 Large: 2432 wide, RMS q/k norms
    return JointTransformerBlock(dim=heads * head_dim, num_attention_heads=heads, attention_head_dim=head_dim,
                                 context_pre_only=False, qk_norm="rms_norm"), heads * head_dim


BLOCKS: dict[str, Callable[[bool], tuple[torch.nn.Module, int]]] = {
    "Flux.1 double block": flux_double_block,
    "SD3.5 Large joint block": sd35_joint_block,
}


def _attn_modules(block: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    from krona_core.adapters.targets import select

    return select(block.named_modules(), ATTN)


def krona(block) -> Attached:
    handle = attach(block, 64, 8, ATTN, network="unet", seed=0, dtype=torch.float32)
    with torch.no_grad():
        for _, adapter in handle.items():  # a non-zero ΔW: the same work, no zero short-cuts
            adapter.w2.normal_(0, 1e-3)
    return Attached(list(handle.parameters()), lambda p: None, handle.remove)


CONFIGS: dict[str, Callable | None] = {
    "no adapter": None,
    "KronA (64, 8)": krona,
    "PEFT LoRA r16": lambda b: peft_lora(b, rank=16, target_modules=PEFT_TARGETS),
    "LyCORIS LoKr": lambda b: lycoris(b, bypass=False, targets=_attn_modules(b)),
    "LyCORIS LoKr bypass": lambda b: lycoris(b, bypass=True, targets=_attn_modules(b)),
}


CLOCKS = {"cpu": "CPU seconds of the process on one thread", "wall": "wall-clock seconds"}


def block_inputs(width: int, image_tokens: int, text_tokens: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"hidden_states": torch.randn(1, image_tokens, width, generator=g).to(DEVICE),
            "encoder_hidden_states": torch.randn(1, text_tokens, width, generator=g).to(DEVICE),
            "temb": torch.randn(1, width, generator=g).to(DEVICE)}


def make_step(block, inputs: dict[str, torch.Tensor], params: list[torch.nn.Parameter]) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None

    def step() -> None:
        hidden = inputs["hidden_states"].clone().requires_grad_(True)
        context, out = block(hidden_states=hidden, encoder_hidden_states=inputs["encoder_hidden_states"],
                             temb=inputs["temb"])
        (out.float().square().mean() + context.float().square().mean()).backward()
        if optimizer:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def fastest(step: Callable[[], None], repeats: int, clock: str) -> float:
    return min((cpu_timed if clock == "cpu" else timed)(step) for _ in range(repeats))


def bench_block(name: str, quick: bool, rounds: int, tokens: tuple[int, int], repeats: int = 1, clock: str = "wall",
                log=print) -> dict:
    block, width = BLOCKS[name](quick)
    block = block.to(DEVICE).requires_grad_(False)
    inputs = block_inputs(width, *tokens)
    times: dict[str, list[float]] = {config: [] for config in CONFIGS}
    info: dict[str, dict] = {}
    for round_index in range(rounds + 1):  # round 0 warms every configuration up
        for config in CONFIGS:
            with adapter(block, config, CONFIGS) as attached:
                elapsed = fastest(make_step(block, inputs, attached.params if attached else []), repeats, clock)
                if round_index:
                    times[config].append(elapsed)
                    log(f"  {name} round {round_index} {config}: {elapsed:.3f} s")
                else:
                    info[config] = {"params": sum(p.numel() for p in attached.params) if attached else 0}
    for config in CONFIGS:
        with adapter(block, config, CONFIGS) as attached:
            info[config]["peak_bytes"] = peak_memory(make_step(block, inputs, attached.params if attached else []))
    base = sum(p.numel() for p in block.parameters())
    return {"width": width, "base_params": base, "tokens": list(tokens),
            "configs": {c: {**info[c], "time": summary(times[c]), "rounds": times[c]} for c in CONFIGS}}


def paired(a: dict, b: dict) -> dict[str, float]:
    """The per-round ratios a / b (same round, same load): median, min and max."""
    return summary([x / y for x, y in zip(a["rounds"], b["rounds"])])


def targets(results: dict) -> list[tuple[str, str, bool]]:
    """The issue's targets: KronA step ≤ 1.0× LoRA r16 and ≤ 0.5× LoKr default; memory ≤ LoRA r16."""
    rows = []
    for name, block in results["blocks"].items():
        c = block["configs"]
        k, lora, lokr = c["KronA (64, 8)"], c["PEFT LoRA r16"], c["LyCORIS LoKr"]
        step_lora, step_lokr = paired(k, lora), paired(k, lokr)
        memory = k["peak_bytes"] / max(lora["peak_bytes"], 1)
        spread = lambda r: f"{r['median']:.3f}× ({r['min']:.3f}–{r['max']:.3f})"  # noqa: E731
        rows += [(f"{name}: step ≤ 1.0× LoRA r16", spread(step_lora), step_lora["median"] <= 1.0),
                 (f"{name}: step ≤ 0.5× LyCORIS LoKr", spread(step_lokr), step_lokr["median"] <= 0.5),
                 (f"{name}: peak memory ≤ 1.0× LoRA r16", f"{memory:.3f}×", memory <= 1.0)]
    return rows


def write_report(results: dict, out: Path) -> str:
    meta = results["meta"]
    lines = ["# KronA on flow-matching transformer blocks", "",
             f"Generated by `python bench/flow_blocks.py{' --quick' if meta['quick'] else ''}` on {meta['date']} · "
             f"{meta['device']} · {meta['threads']} threads · torch {meta['torch']} · {meta['rounds']} interleaved rounds, "
             f"fastest of {meta.get('repeats', 1)} step(s) per configuration and round, {CLOCKS[meta.get('clock', 'wall')]}. "
             "Random init, fp32; adapters on both "
             "streams' attention projections. A target is the median of the ratios taken within each round (their range "
             "in brackets); the tables give the median and range of the step times.", "", "## Targets", "",
             "| target | measured (per-round range) | met |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {'yes' if ok else 'no'} |" for t, v, ok in targets(results)]
    for name, block in results["blocks"].items():
        c = block["configs"]
        lora, floor = c["PEFT LoRA r16"], c["no adapter"]
        lines += ["", f"## {name} ({block['width']} wide, {block['base_params'] / 1e6:.1f} M base parameters, "
                  f"{block['tokens'][0]} image + {block['tokens'][1]} text tokens)", "",
                  "| adapter | params | step s (min–max over rounds) | vs LoRA r16 | vs floor | peak MiB | peak vs LoRA r16 |",
                  "|---|---|---|---|---|---|---|"]
        for config, r in c.items():
            t = r["time"]
            lines.append(f"| {config} | {r['params']:,} | {t['median']:.3f} ({t['min']:.3f}–{t['max']:.3f}) | "
                         f"{ratio(t['median'], lora['time']['median'])} | {ratio(t['median'], floor['time']['median'])} | "
                         f"{r['peak_bytes'] / 2**20:.1f} | {ratio(r['peak_bytes'], lora['peak_bytes'])} |")
    text = "\n".join(lines) + "\n"
    suffix = "-quick" if meta["quick"] else ""  # a quick run never overwrites the real figures
    (out / f"FLOW_BLOCKS{suffix}.md").write_text(text, encoding="utf-8")
    (out / f"flow_blocks{suffix}.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="narrow blocks, one round: exercise every code path only")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--repeats", type=int, default=3, help="steps per configuration and round; the fastest counts")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                        help="cpu: process CPU time on one thread (the default on a CPU); wall: wall time (CUDA's default)")
    parser.add_argument("--image-tokens", type=int, default=256, help="image tokens (256 = a 256 px image in Flux)")
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens")
    parser.add_argument("--out", default=str(BENCH), help="folder for FLOW_BLOCKS.md and flow_blocks.json")
    args = parser.parse_args(argv)
    rounds, repeats = (1, 1) if args.quick else (args.rounds, args.repeats)
    clock = args.clock or ("wall" if DEVICE.type == "cuda" else "cpu")
    if clock == "cpu":
        torch.set_num_threads(1)
    tokens = (16, 8) if args.quick else (args.image_tokens, args.text_tokens)
    results = {"meta": {"date": datetime.date.today().isoformat(), "device": str(DEVICE) if DEVICE.type == "cuda"
                        else platform.processor() or "cpu", "threads": torch.get_num_threads(),
                        "torch": torch.__version__, "rounds": rounds, "repeats": repeats, "clock": clock,
                        "quick": args.quick},
               "blocks": {name: bench_block(name, args.quick, rounds, tokens, repeats, clock) for name in BLOCKS}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(write_report(results, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

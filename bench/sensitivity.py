"""Hyperparameter sensitivity (the paper's central claim), measured on the teacher–student task.

For learning rates {1e-4, 3e-4, 1e-3, 3e-3, 1e-2} × seeds {0, 1, 2}, train KronA (64, 8) and PEFT
LoRA rank 4 (alpha = rank, the diffusers DreamBooth-LoRA default) on the attention q/k/v/out of
the tiny UNet with the same loop, data, steps and schedule, and report the share of the
base→teacher denoising-loss gap closed on held-out images (higher is better; the teacher is a
KronA fit, see krona_core/evaluation.py). Writes bench/SENSITIVITY.md and bench/sensitivity.png.

    python bench/sensitivity.py            # full sweep (≈ 15 min on 2 CPU cores)
    python bench/sensitivity.py --quick    # 2 rates × 1 seed × 20 steps: the code paths only
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from krona_core.tiny.teacher import build_task, gap_closed, run_student  # noqa: E402
from krona_core.train.config import TrainConfig  # noqa: E402

LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
SEEDS = [0, 1, 2]


class PeftLoRA:
    """PEFT LoRA r4 on the same attention projections, shaped like a trainer handle."""

    network = "unet"

    def __init__(self, unet: torch.nn.Module, rank: int, seed: int):
        from peft import LoraConfig, inject_adapter_in_model

        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                            target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        self.model = inject_adapter_in_model(config, unet)
        self._params = [p for n, p in unet.named_parameters() if "lora_" in n]
        for p in self._params:
            p.requires_grad_(True)

    def parameters(self):
        return iter(self._params)


def lora_adapters(rank: int):
    def make(denoiser, config):
        return [PeftLoRA(denoiser.unet, rank, config.seed)]

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench"))
    args = parser.parse_args()
    lrs, seeds, steps = (LRS[1:4:2], SEEDS[:1], 20) if args.quick else (LRS, SEEDS, 500)
    started = time.perf_counter()
    task = build_task(seed=0, teacher_seed=1, teacher_steps=steps)
    methods = {"KronA (64, 8)": None, "LoRA r4": lora_adapters(4)}
    results: dict[str, dict[float, list[float]]] = {m: {lr: [] for lr in lrs} for m in methods}
    params: dict[str, int] = {}
    for lr in lrs:
        for seed in seeds:
            for method, adapters in methods.items():
                result, student = run_student(task, TrainConfig(steps=steps, lr=lr, seed=seed), adapters=adapters)
                closed = gap_closed(task, student)["heldout_images"]
                results[method][lr].append(closed)
                params[method] = sum(p.numel() for h in result.handles for p in h.parameters())
                print(f"{method:14s} lr {lr:.0e} seed {seed}: gap closed {closed:+.3f}", flush=True)
    lines = [
        "# Hyperparameter sensitivity: KronA vs LoRA on the teacher–student task",
        "",
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()} / {platform.processor() or 'cpu'}, "
        f"torch {torch.__version__}, {steps} steps per run, batch 1 × accumulation 4, AdamW (wd 1e-2), constant lr. "
        f"Total {time.perf_counter() - started:.0f} s." + (" QUICK MODE: code paths only, not a result." if args.quick else ""),
        "",
        "Share of the base→teacher denoising-loss gap closed on held-out images (1.0 = as good as the teacher; "
        f"base loss {task.base_loss['heldout_images']:.4f}, teacher {task.teacher_loss['heldout_images']:.4f}). "
        f"Mean ± standard deviation over seeds {seeds}, [min, max].",
        "",
        "| learning rate | " + " | ".join(f"{m} ({params[m]:,} params)" for m in methods) + " |",
        "|---:|" + "---:|" * len(methods),
    ]
    for lr in lrs:
        cells = []
        for m in methods:
            values = results[m][lr]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):+.3f} ± {spread:.3f} [{min(values):+.3f}, {max(values):+.3f}]")
        lines.append(f"| {lr:.0e} | " + " | ".join(cells) + " |")
    lines.append("")
    for m in methods:
        means = [statistics.mean(results[m][lr]) for lr in lrs]
        good = [lr for lr, v in zip(lrs, means) if v >= 0.9 * max(means)]
        lines.append(f"- {m}: best mean {max(means):+.3f} at lr {lrs[means.index(max(means))]:.0e}; within 90% of its best "
                     f"at {len(good)} of {len(lrs)} learning rates ({', '.join(f'{lr:.0e}' for lr in good)}); "
                     f"range of means across rates {max(means) - min(means):.3f}.")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    (out / ("SENSITIVITY-quick.md" if args.quick else "SENSITIVITY.md")).write_text(text, encoding="utf-8")
    plot(results, lrs, out / ("sensitivity-quick.png" if args.quick else "sensitivity.png"))
    print(text)


def plot(results: dict[str, dict[float, list[float]]], lrs: list[float], path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, right, top, bottom = 640, 380, 60, 20, 40, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    values = [v for m in results.values() for vs in m.values() for v in vs]
    low, high = min(0.0, min(values)), max(1.05, max(values))
    colors = [(25, 80, 170), (200, 90, 30)]

    def xy(i: float, v: float) -> tuple[float, float]:
        x = left + (width - left - right) * (i / max(len(lrs) - 1, 1))
        return x, top + (height - top - bottom) * (1 - (v - low) / (high - low))

    draw.text((left, 10), "gap closed vs learning rate (mean, seeds as dots)", fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline=(160, 160, 160))
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, y = xy(0, tick)
        draw.line([(left, y), (width - right, y)], fill=(235, 235, 235))
        draw.text((8, y - 6), f"{tick:.2f}", fill=(90, 90, 90), font=font)
    for i, lr in enumerate(lrs):
        x, _ = xy(i, low)
        draw.text((x - 14, height - bottom + 8), f"{lr:.0e}", fill=(90, 90, 90), font=font)
    for (name, by_lr), color in zip(results.items(), colors):
        means = [xy(i, statistics.mean(by_lr[lr])) for i, lr in enumerate(lrs)]
        draw.line(means, fill=color, width=2)
        for i, lr in enumerate(lrs):
            for v in by_lr[lr]:
                x, y = xy(i, v)
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=color)
        draw.text((width - right - 150, top + 10 + 14 * list(results).index(name)), name, fill=color, font=font)
    image.save(path)


if __name__ == "__main__":
    main()

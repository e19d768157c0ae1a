"""Personalisation quality on the world base (the paper's claims, measured): KronA vs LoRA r4, a LoRA
of about KronA's parameter count, and LyCORIS LoKr, all on the attention q/k/v/out of the shipped
world base, trained by the project's loop on the same task (4 emblem images, `sks`, prior
preservation with "a circle"), scored by krona_core.eval.world_metrics before and after, for
learning rates × seeds × step counts. Writes bench/QUALITY.md, bench/quality.json, bench/quality.png.

    python bench/quality.py                       # the grid below (see QUALITY.md for its run time)
    python bench/quality.py --quick               # 2 rates × 1 seed × few steps: the code paths only
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sensitivity import lora_adapters  # noqa: E402
from krona_core.adapters.attach import attach  # noqa: E402
from krona_core.adapters.targets import select  # noqa: E402
from krona_core.eval.world_metrics import subject_scores  # noqa: E402
from krona_core.world import model as world_model  # noqa: E402
from krona_core.world.personalise import RECIPE, task_examples, train_method  # noqa: E402

LRS = [1e-4, 1e-3, 1e-2]
SEEDS = [0, 1, 2]
STEPS = [150, 300]  # scored during one run of the longest (constant lr: the same as separate runs)


class LycorisLoKr:
    """LyCORIS LoKr (its defaults as kohya users run it: factor −1, full w2) as a trainer handle."""

    network = "unet"

    def __init__(self, unet: torch.nn.Module, seed: int):
        from lycoris.modules.lokr import LokrModule

        torch.manual_seed(seed)
        self.modules = []
        for name, module in select(unet.named_modules(), "attn"):
            lokr = LokrModule("lycoris_" + name.replace(".", "_"), module, 1.0, lora_dim=10**6, alpha=1, factor=-1,
                              full_matrix=True)
            lokr.apply_to()
            self.modules.append(lokr)

    def parameters(self):
        return iter([p for m in self.modules for p in m.parameters()])


def methods(unet: torch.nn.Module) -> tuple[dict, dict[str, int]]:
    """Method name → make_handles (None: KronA through the project's own attach), and each
    method's trainable parameter count on `unet`'s attention."""
    layers = select(unet.named_modules(), "attn")
    per_rank = sum(m.in_features + m.out_features for _, m in layers)
    probe = attach(copy.deepcopy(unet), RECIPE.a1, RECIPE.a2, "attn")
    krona = probe.num_parameters()
    equal = max(1, round(krona / per_rank))
    lokr = sum(p.numel() for p in LycorisLoKr(copy.deepcopy(unet), 0).parameters())
    names = {f"KronA ({RECIPE.a1}, {RECIPE.a2})": (None, krona), "LoRA r4": (lora_adapters(4), 4 * per_rank),
             f"LoRA r{equal} (≈ KronA's count)": (lora_adapters(equal), equal * per_rank),
             "LyCORIS LoKr (factor −1)": (lambda d, c: [LycorisLoKr(d.unet, c.seed)], lokr)}
    return {k: v[0] for k, v in names.items()}, {k: v[1] for k, v in names.items()}


def run_cell(base_path: Path, lr: float, seed: int, name: str, steps: list[int], samples: int) -> list[dict]:
    """One method trained at one rate and seed, scored at each of `steps` (one row each)."""
    base, _ = world_model.load(base_path)
    makers, params = methods(base.unet)
    student = base.denoiser(copy.deepcopy(base.unet))
    config = dataclasses.replace(RECIPE, lr=lr, seed=seed, steps=max(steps))
    scored: dict[int, dict] = {}

    def on_step(done: int, loss: float, lr_now: float) -> None:
        if done in steps:
            scored[done] = subject_scores(student, samples_per_prompt=samples).as_dict()

    result = train_method(student, config, makers[name], task_examples(base.denoiser()), on_step=on_step)
    assert sum(p.numel() for h in result.handles for p in h.parameters()) == params[name], name
    rows = [{"method": name, "lr": lr, "seed": seed, "steps": n, **s} for n, s in scored.items()]
    for row in rows:
        print(f"{name:30s} lr {lr:.0e} seed {seed} steps {row['steps']:4d}: subject {row['subject_fidelity']:+.3f} "
              f"prompt {row['prompt_fidelity']:.3f} prior {row['prior_subject_rate']:.2f}", flush=True)
    return rows


def _one_thread() -> None:
    torch.set_num_threads(1)


def run(base_path: Path, lrs: list[float], seeds: list[int], steps: list[int], samples: int, jobs: int = 1) -> dict:
    """Every (rate, seed, method) cell, `jobs` at a time in worker processes of one torch thread each
    (tiny models gain nothing from more threads; cells are independent and seeded)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    base, _ = world_model.load(base_path)
    base_scores = subject_scores(base.denoiser(), samples_per_prompt=samples).as_dict()
    _, params = methods(base.unet)
    cells = [(base_path, lr, seed, name, steps, samples) for lr in lrs for seed in seeds for name in params]
    if jobs == 1:
        rows = [row for cell in cells for row in run_cell(*cell)]
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_one_thread) as pool:
            rows = [row for done in pool.map(run_cell, *zip(*cells)) for row in done]
    return {"base": base_scores, "rows": rows, "params": params}


def _stat(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.3f} ± {sd:.3f}"


def _cells(rows: list[dict], method: str, lr: float, steps: int, key: str) -> list[float]:
    return [r[key] for r in rows if r["method"] == method and r["lr"] == lr and r["steps"] == steps]


def report(results: dict, lrs: list[float], seeds: list[int], steps: list[int], seconds: float, quick: bool,
           jobs: int = 1) -> str:
    rows, params, base = results["rows"], results["params"], results["base"]
    names = list(params)
    lines = [
        "# Personalisation quality on the world base: KronA vs LoRA vs LoKr", "",
        f"Generated by `python bench/quality.py` on {datetime.date.today().isoformat()}, {platform.machine()}, torch "
        f"{torch.__version__}, " + (f"{jobs} worker processes of 1 thread" if jobs > 1 else
                                     f"{torch.get_num_threads()} thread(s)") + f"; {seconds:.0f} s in all. Grid: learning rates "
        f"{', '.join(f'{lr:.0e}' for lr in lrs)} × seeds {seeds} × steps {steps} (the task recipe otherwise: AdamW, "
        "constant lr, batch 1 × 4 accumulated, prior preservation weight 1 with 8 generated class images)."
        + (" QUICK MODE: code paths only, not a result." if quick else ""), "",
        "Metrics (krona_core/eval/world_metrics.py): **subject** = cosine similarity of the generated subject's crop to "
        "the emblem references (the DINO / CLIP-I analogue; references score 0.97 against each other, the world's "
        "own shapes ≈ 0.01); **prompt** = accuracy of the prompted background, size and position on prompts that put "
        "the subject where it was never trained (the CLIP-T analogue); **prior** = share of class-prompt images "
        "turned into the emblem (lower is better). Mean ± sd over seeds.", "",
        f"Base (no adapter): subject {base['subject_fidelity']:+.3f}, prompt {base['prompt_fidelity']:.3f}, "
        f"emblem rate {base['subject_rate']:.2f}, prior {base['prior_subject_rate']:.2f}.", "",
        "| method | params | lr | steps | subject | prompt | emblem rate | prior |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        for lr in lrs:
            for n in steps:
                cell = {k: _cells(rows, name, lr, n, k) for k in ("subject_fidelity", "prompt_fidelity", "subject_rate",
                                                                    "prior_subject_rate")}
                lines.append(f"| {name} | {params[name]:,} | {lr:.0e} | {n} | {_stat(cell['subject_fidelity'])} | "
                             f"{_stat(cell['prompt_fidelity'])} | {_stat(cell['subject_rate'])} | "
                             f"{_stat(cell['prior_subject_rate'])} |")
    lines += ["", "## Sensitivity to the learning rate (the paper's claim) and quality per parameter", ""]
    for name in names:
        means = [statistics.mean(_cells(rows, name, lr, max(steps), "subject_fidelity")) for lr in lrs]
        best = max(range(len(lrs)), key=lambda i: means[i])
        prompt = statistics.mean(_cells(rows, name, lrs[best], max(steps), "prompt_fidelity"))
        lines.append(f"- {name} ({params[name]:,} parameters): best subject {means[best]:+.3f} at lr {lrs[best]:.0e} "
                     f"(prompt {prompt:.3f}); range of subject means across learning rates {max(means) - min(means):.3f}, "
                     f"gain over the base at the worst rate {min(means) - base['subject_fidelity']:+.3f}.")
    krona, lora = names[0], names[1]
    best = {n: max(statistics.mean(_cells(rows, n, lr, max(steps), "subject_fidelity")) for lr in lrs) for n in (krona, lora)}
    lines += ["", f"Fewer parameters (the paper's claim): {krona} has {params[krona] / params[lora]:.0%} of {lora}'s "
              f"parameters; its best subject fidelity is {best[krona]:+.3f} against {best[lora]:+.3f} "
              f"({best[krona] - best[lora]:+.3f})."]
    lines += ["", "![subject fidelity vs learning rate](quality.png)", ""]
    return "\n".join(lines)


def plot(results: dict, lrs: list[float], steps: int, path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, right, top, bottom = 720, 400, 60, 230, 40, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    rows = [r for r in results["rows"] if r["steps"] == steps]
    values = [r["subject_fidelity"] for r in rows] + [results["base"]["subject_fidelity"]]
    low, high = min(values) - 0.05, max(values) + 0.05
    colours = [(25, 80, 170), (200, 90, 30), (40, 150, 60), (150, 40, 150)]

    def xy(i: float, v: float) -> tuple[float, float]:
        return (left + (width - left - right) * i / max(len(lrs) - 1, 1),
                top + (height - top - bottom) * (1 - (v - low) / (high - low)))

    draw.text((left, 10), f"subject fidelity after {steps} steps vs learning rate (mean; seeds as dots)", fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline=(160, 160, 160))
    for k in range(5):
        v = low + (high - low) * k / 4
        draw.text((8, xy(0, v)[1] - 6), f"{v:+.2f}", fill=(90, 90, 90), font=font)
    y = xy(0, results["base"]["subject_fidelity"])[1]
    draw.line([(left, y), (width - right, y)], fill=(150, 150, 150))
    draw.text((width - right + 8, y - 6), "base", fill=(90, 90, 90), font=font)
    for i, lr in enumerate(lrs):
        draw.text((xy(i, low)[0] - 14, height - bottom + 8), f"{lr:.0e}", fill=(90, 90, 90), font=font)
    for n, (name, colour) in enumerate(zip(results["params"], colours)):
        means = []
        for i, lr in enumerate(lrs):
            vals = [r["subject_fidelity"] for r in rows if r["method"] == name and r["lr"] == lr]
            for v in vals:
                x, yv = xy(i, v)
                draw.ellipse([x - 2 + 3 * n, yv - 2, x + 2 + 3 * n, yv + 2], fill=colour)
            means.append(xy(i, statistics.mean(vals)))
        draw.line(means, fill=colour, width=2)
        label = name.replace("≈", "~").replace("−", "-")  # PIL's default font has neither
        draw.text((width - right + 8, top + 14 * n), label, fill=colour, font=font)
    image.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--base", default=str(world_model.WEIGHTS))
    parser.add_argument("--out", default=str(ROOT / "bench"))
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="how many of the seeds 0, 1, 2 to run")
    parser.add_argument("--lrs", type=float, nargs="+", default=LRS, help="learning rates (a reduced grid)")
    parser.add_argument("--steps", type=int, nargs="+", default=STEPS, help="step counts scored")
    parser.add_argument("--jobs", type=int, default=1, help="cells trained at once, one process and torch thread each")
    args = parser.parse_args(argv)
    lrs, seeds, steps, samples = (LRS[1:], SEEDS[:1], [2, 4], 1) if args.quick else (args.lrs, SEEDS[:args.seeds], args.steps, 2)
    started = time.perf_counter()
    results = run(Path(args.base), lrs, seeds, steps, samples, max(1, args.jobs))
    out, tag = Path(args.out), "-quick" if args.quick else ""
    text = report(results, lrs, seeds, steps, time.perf_counter() - started, args.quick, max(1, args.jobs)).replace("quality.png", f"quality{tag}.png")
    (out / f"QUALITY{tag}.md").write_text(text, encoding="utf-8")
    (out / f"quality{tag}.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    plot(results, lrs, max(steps), out / f"quality{tag}.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

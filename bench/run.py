"""KronA against LoRA and LoKr peers, side by side, reported as ratios with the raw numbers.

    python bench/run.py                 # full run (tens of minutes on 2 CPU cores); writes bench/RESULTS.md + PNG
    python bench/run.py --quick         # every code path on a tiny UNet in seconds; asserts nothing about time

Sections: trainable parameters on the real architectures; per-layer Kronecker matmul micro-bench
(both association orders, materialised, LoRA r4, and the two GEMMs alone); training steps
(forward + backward + AdamW on the adapter only) on randomly initialised real-size SD1.5 and
SDXL UNets for KronA efficient / KronA materialised / LyCORIS LoKr (default and bypass) /
PEFT LoRA r4 / no adapter (the floor) / ComfyUI's trainer LoKr (with COMFYUI_PATH), interleaved
across rounds; with COMFYUI_PATH also patch time in ComfyUI and bypass sampling overhead.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from krona_core import attach, families  # noqa: E402
from krona_core.adapters.counts import unet_counts  # noqa: E402
from krona_core.adapters.targets import select  # noqa: E402
from krona_core.naming.unet import UNetKeyMap  # noqa: E402
from krona_core.ops.bypass import add_kron_delta  # noqa: E402
from krona_core.ops.matmul import materialise  # noqa: E402
from krona_core.ops.shapes import choose_order, choose_shape, kron_flops, lora_flops  # noqa: E402


def build_unet(base: str, **kwargs) -> torch.nn.Module:
    return families.get(base).build_unet(**kwargs)

ATTN_GLOBS = ["*attn1.to_q", "*attn1.to_k", "*attn1.to_v", "*attn1.to_out.0",
              "*attn2.to_q", "*attn2.to_k", "*attn2.to_v", "*attn2.to_out.0"]


#: where training steps and the per-layer bench run: CUDA when present (``--device`` overrides)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn: Callable[[], object]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def cpu_timed(fn: Callable[[], object]) -> float:
    """CPU seconds of this process for fn(): on a machine other jobs share, the work done, not the
    wait for a core (run single-threaded, so no thread spins on a barrier)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# --------------------------------------------------------------------------- adapters under test


@dataclass
class Attached:
    params: list[torch.nn.Parameter]
    save: Callable[[str], None]
    remove: Callable[[], None]
    extra: dict = field(default_factory=dict)


def attn_modules(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return select(unet.named_modules(), "attn")


def krona(unet, materialised: bool = False) -> Attached:
    handle = attach(unet, 64, 8, "attn", seed=0, dtype=torch.float32)
    with torch.no_grad():
        for _, adapter in handle.items():  # non-zero ΔW: the work is the same, but no zero short-cuts
            adapter.w2.normal_(0, 1e-3)
            adapter.materialised = materialised
    return Attached(list(handle.parameters()), lambda p: handle.save(p, overwrite=True), handle.remove)


def lycoris(unet, bypass: bool, targets: list[tuple[str, torch.nn.Module]] | None = None) -> Attached:
    """LyCORIS LoKr (full matrix, factor -1) on `targets` (default: the attention projections)."""
    from lycoris.modules.lokr import LokrModule

    modules = []
    for name, module in attn_modules(unet) if targets is None else targets:
        lokr = LokrModule("lycoris_" + name.replace(".", "_"), module, 1.0, lora_dim=10**6, alpha=1, factor=-1,
                          full_matrix=True, bypass_mode=bypass)
        with torch.no_grad():
            lokr.lokr_w2.normal_(0, 1e-3)
        lokr.to(module.weight.device)
        lokr.apply_to()
        modules.append(lokr)

    def save(path: str) -> None:
        from safetensors.torch import save_file

        save_file({f"{m.lora_name}.{k}": v.detach().half().contiguous() for m in modules for k, v in m.custom_state_dict().items()}, path)

    def remove() -> None:
        for m in modules:
            m.restore()

    return Attached([p for m in modules for p in m.parameters()], save, remove)


def peft_lora(unet, rank: int = 4, target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")) -> Attached:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules)), unet)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
        if p.ndim == 2 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, 0, 1e-3)

    def save(path: str) -> None:
        from safetensors.torch import save_file

        save_file({n: p.detach().half().contiguous() for n, p in unet.named_parameters() if "lora_" in n}, path)

    def remove() -> None:  # put every original layer back
        for name, module in list(unet.named_modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, LoraLayer):
                    setattr(module, child_name, child.get_base_layer())

    return Attached(params, save, remove)


def comfy_lokr(unet) -> Attached:
    """ComfyUI's trainer LoKr (comfy.weight_adapter.lokr: W + kron(w1, w2) rebuilt per forward, as its
    TrainLoraNode applies it through weight wrappers), on the same modules, rank 8 (its default)."""
    import torch.nn.utils.parametrize as parametrize
    from comfy.weight_adapter.lokr import LoKrAdapter

    class Wrapper(torch.nn.Module):
        def __init__(self, diff):
            super().__init__()
            self.diff = diff

        def forward(self, weight):
            return self.diff(weight)

    wrapped = []
    params = []
    for _, module in attn_modules(unet):
        diff = LoKrAdapter.create_train(module.weight, rank=8).to(module.weight.device)
        with torch.no_grad():
            diff.lokr_w1.normal_(0, 1e-3)
        parametrize.register_parametrization(module, "weight", Wrapper(diff), unsafe=True)
        wrapped.append((module, diff))
        params += list(diff.parameters())

    def save(path: str) -> None:
        from safetensors.torch import save_file

        save_file({f"m{i}.{k}": v.detach().half().contiguous() for i, (_, d) in enumerate(wrapped) for k, v in d.state_dict().items()}, path)

    def remove() -> None:
        for module, _ in wrapped:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)

    return Attached(params, save, remove)


CONFIGS: dict[str, Callable] = {
    "no adapter": None,
    "KronA (64, 8) efficient": lambda u: krona(u),
    "KronA (64, 8) materialised": lambda u: krona(u, materialised=True),
    "LyCORIS LoKr": lambda u: lycoris(u, bypass=False),
    "LyCORIS LoKr bypass": lambda u: lycoris(u, bypass=True),
    "PEFT LoRA r4": lambda u: peft_lora(u),
}


@contextlib.contextmanager
def adapter(unet, name: str, configs: dict[str, Callable] | None = None) -> Iterator[Attached | None]:
    """Configuration `name` of `configs` (default: this bench's) attached for the block's duration."""
    factory = (CONFIGS if configs is None else configs)[name]
    attached = factory(unet) if factory else None
    try:
        yield attached
    finally:
        if attached:
            attached.remove()


# --------------------------------------------------------------------------- training step


def unet_inputs(unet, latent: int) -> dict:
    """Seeded inputs (made on the CPU, so every device sees the same numbers) on the UNet's device."""
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    kwargs = {"sample": torch.randn(1, 4, latent, latent, generator=g), "timestep": torch.tensor([500]),
              "encoder_hidden_states": torch.randn(1, 77, cfg.cross_attention_dim, generator=g)}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=g),
                                       "time_ids": torch.tensor([[latent * 8.0, latent * 8.0, 0, 0, latent * 8.0, latent * 8.0]])}
    device = next(unet.parameters()).device
    return {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device)) for k, v in kwargs.items()}


def make_step(unet, inputs: dict, params: list[torch.nn.Parameter]) -> Callable[[], None]:
    """forward + backward + AdamW step on the adapter parameters (the input latent takes a gradient
    too, so the no-adapter floor back-propagates through the same network)."""
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None
    target = torch.randn(inputs["sample"].shape, generator=torch.Generator().manual_seed(1)).to(inputs["sample"].device)

    def step() -> None:
        sample = inputs["sample"].clone().requires_grad_(True)
        out = unet(**{**inputs, "sample": sample}).sample
        loss = torch.nn.functional.mse_loss(out, target)
        loss.backward()
        if optimizer:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(step: Callable[[], None]) -> int:
    """Peak memory the step adds (activations, gradients, optimizer state), excluding the frozen
    base. On CUDA: max allocated above what was allocated before. On the CPU: resident size —
    freed memory is handed back to the OS first (malloc_trim), then a thread samples the resident
    size every millisecond while the step runs; Linux only, 0 elsewhere."""
    import ctypes
    import threading

    if DEVICE.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(DEVICE)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        before = torch.cuda.memory_allocated(DEVICE)
        step()
        torch.cuda.synchronize(DEVICE)
        return max(torch.cuda.max_memory_allocated(DEVICE) - before, 0)
    if not os.path.exists("/proc/self/statm"):
        return 0
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    start = _rss()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        step()
    finally:
        done.set()
        thread.join()
    return max(peak[0] - start, 0)


def bench_training(base: str, latents: list[int], rounds: int, unet=None, log=print) -> dict:
    unet = (unet or build_unet(base, device="cpu")).to(DEVICE)
    unet.requires_grad_(False).train(False)
    results: dict = {}
    for latent in latents:
        inputs = unet_inputs(unet, latent)
        times: dict[str, list[float]] = {name: [] for name in CONFIGS}
        info: dict[str, dict] = {}
        for round_index in range(rounds + 1):  # round 0 warms every configuration up
            for name in CONFIGS:
                with adapter(unet, name) as attached:
                    step = make_step(unet, inputs, attached.params if attached else [])
                    elapsed = timed(step)
                    if round_index:
                        times[name].append(elapsed)
                        log(f"  {base} {latent}×{latent} round {round_index} {name}: {elapsed:.3f} s")
                    elif name not in info:
                        info[name] = {"params": sum(p.numel() for p in attached.params) if attached else 0}
                        if attached:
                            with tempfile.TemporaryDirectory() as tmp:
                                path = os.path.join(tmp, "adapter.safetensors")
                                attached.save(path)
                                info[name]["file_bytes"] = os.path.getsize(path)
        for name in CONFIGS:
            with adapter(unet, name) as attached:
                info[name]["peak_bytes"] = peak_memory(make_step(unet, inputs, attached.params if attached else []))
        results[latent] = {name: {**info[name], "time": summary(times[name])} for name in CONFIGS}
    return results


# --------------------------------------------------------------------------- per-layer micro-bench


LAYER_SHAPES = [(320, 320), (640, 640), (1280, 1280), (320, 768), (1280, 2048)]


def interleaved_medians(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each function, timed round-robin so that the machine's slow spells
    (frequent on shared CPUs) fall on every case alike instead of on whichever ran then."""
    for fn in fns.values():
        fn()  # warm-up: allocator, kernels' first-call setup
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def bench_layers(tokens: int, reps: int) -> list[dict]:
    """Per layer, as the adapter runs it: base output + ΔW·x, forward and forward + backward.

    "its 2 GEMMs" is the lower bound of the w2-first order: the same two products on operands
    that need no layout change (the result is wrong, the work is not), plus the add — what
    KronA would cost with zero reshape/transpose/copy overhead.
    """
    rows = []
    for out_f, in_f in LAYER_SHAPES:
        shape = choose_shape((out_f, in_f), 64, 8)
        a1, a2, b1, b2 = shape.a1, shape.a2, shape.b1, shape.b2
        g = torch.Generator().manual_seed(0)

        def randn(*size: int) -> torch.Tensor:
            return torch.randn(*size, generator=g).to(DEVICE)

        x, base, grad_out = randn(tokens, in_f), randn(tokens, out_f), randn(tokens, out_f)
        w1, w2 = randn(a1, a2).requires_grad_(), randn(b1, b2).requires_grad_()
        up, down = randn(out_f, 4).requires_grad_(), randn(4, in_f).requires_grad_()

        def gemms() -> torch.Tensor:
            t = x.reshape(tokens * a2, b2) @ w2.t()
            return base + (t.reshape(tokens * b1, a2) @ w1.t()).reshape(tokens, out_f)

        cases: dict[str, Callable[[], torch.Tensor]] = {
            "kron": lambda: add_kron_delta(base, x, w1, w2),
            "w1_first": lambda: add_kron_delta(base, x, w1, w2, order="w1_first"),
            "w2_first": lambda: add_kron_delta(base, x, w1, w2, order="w2_first"),
            "gemms": gemms,
            "materialised": lambda: base + x @ materialise(w1, w2).t(),
            "lora_r4": lambda: base + (x @ down.t()) @ up.t(),
        }
        row = {"shape": f"{out_f}×{in_f}", "factors": f"{a1}×{a2} ⊗ {b1}×{b2}", "order": choose_order(shape),
               "kron_mflops": kron_flops(shape, tokens) / 1e6, "lora_mflops": lora_flops((out_f, in_f), 4, tokens) / 1e6}
        with torch.no_grad():
            row.update({f"{name}_ms": t * 1e3 for name, t in interleaved_medians(cases, reps).items()})
        training = {name: (lambda fn=fn: fn().backward(grad_out)) for name, fn in cases.items()}
        row.update({f"{name}_train_ms": t * 1e3 for name, t in interleaved_medians(training, reps).items()})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- ComfyUI apply time


def load_pack():
    """The pack as a package (its nodes use relative imports into krona_core)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("comfyui_krona", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_krona"] = module
    spec.loader.exec_module(module)
    import comfyui_krona.nodes.comfy_patch as comfy_patch

    return comfy_patch


def bench_comfy(rounds: int, quick: bool, log=print) -> dict:
    import comfy.lora
    import comfy.model_patcher
    import comfy.sd
    from safetensors.torch import load_file

    from krona_core.files.reader import read
    from krona_core.files.writer import build_metadata, write

    comfy_patch = load_pack()
    base = "sd1" if quick else "sdxl"
    if quick:  # the tiny SD1.5 layout ComfyUI still detects (tests/helpers)
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers.tiny_comfy import sd15_state_dict

        unet_sd = {k[len("model.diffusion_model."):]: v for k, v in sd15_state_dict().items() if k.startswith("model.diffusion_model.")}
    else:  # the real architecture's ldm names and shapes, from the diffusers config on the meta device
        meta_unet = build_unet(base)
        names = UNetKeyMap.from_names(n for n, _ in meta_unet.named_modules() if n)
        unet_sd = {names.to_ldm(k): v for k, v in meta_unet.state_dict().items()}
    import comfy.model_detection

    model_config = comfy.model_detection.model_config_from_unet(unet_sd, "")
    unet_config = model_config.unet_config
    model = model_config.get_model({}, device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    shapes = {"model.diffusion_model." + k[len("diffusion_model."):]: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("diffusion_model.")}
    unet_map = UNetKeyMap.from_names(shapes)
    targets = {}
    for key, shape in shapes.items():
        path = key[len("model.diffusion_model."):-len(".weight")] if key.endswith(".weight") else None
        if path and any(path.endswith(s) for s in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                                                     "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")):
            targets[families.get(base).kohya_name("unet", path, unet_map)] = shape
    g = torch.Generator().manual_seed(0)
    modules, lora = {}, {}
    for name, shape in targets.items():
        s = choose_shape(shape, 64, 8)
        modules[name] = (torch.randn(s.w1_shape, generator=g) * 0.02, torch.randn(s.w2_shape, generator=g) * 0.02)
        lora[f"{name}.lora_up.weight"] = (torch.randn(shape[0], 4, generator=g) * 0.02).half()
        lora[f"{name}.lora_down.weight"] = (torch.randn(4, shape[1], generator=g) * 0.02).half()
        lora[f"{name}.alpha"] = torch.tensor(4.0).half()
    tmp = tempfile.mkdtemp()
    krona_path = os.path.join(tmp, "apply.krona.safetensors")
    write(krona_path, modules, build_metadata(modules, base_model=base, title="apply"))
    file = read(krona_path)
    lokr_sd, lora_sd = load_file(krona_path), lora

    def ours(bypass: bool):
        return comfy_patch.apply_to(patcher, None, file, 1.0, 1.0, bypass=bypass)[0]

    def loraloader(sd):
        return comfy.sd.load_lora_for_models(patcher, None, sd, 1.0, 0.0)[0]

    cases = {"Apply KronA (merge)": lambda: ours(False), "Apply KronA (bypass)": lambda: ours(True),
             "LoraLoader, same KronA file": lambda: loraloader(lokr_sd),
             "LoraLoader, LoRA r4 same layers": lambda: loraloader(lora_sd)}
    patch_times: dict[str, list[float]] = {k: [] for k in cases}
    for round_index in range(rounds + 1):
        for name, make in cases.items():
            start = time.perf_counter()
            clone = make()
            clone.patch_model(device_to=torch.device("cpu"))
            elapsed = time.perf_counter() - start
            clone.unpatch_model(device_to=torch.device("cpu"))
            if round_index:
                patch_times[name].append(elapsed)
                log(f"  comfy patch round {round_index} {name}: {elapsed:.3f} s")
    # sampling overhead of bypass vs merged: one diffusion-model forward at a 32×32 latent
    latent = 16 if quick else 32
    x = torch.randn(1, 4, latent, latent)
    context = torch.randn(1, 77, unet_config["context_dim"])
    extra = {"y": torch.randn(1, unet_config["adm_in_channels"])} if unet_config.get("adm_in_channels") else {}
    sigma = torch.tensor([1.0])
    forward_times: dict[str, list[float]] = {"merged": [], "bypass": []}
    for round_index in range(rounds + 1):
        for mode in ("merged", "bypass"):
            clone = ours(mode == "bypass")
            clone.patch_model(device_to=torch.device("cpu"))
            with torch.no_grad():
                elapsed = timed(lambda: clone.model.apply_model(x, sigma, c_crossattn=context, **extra))
            clone.unpatch_model(device_to=torch.device("cpu"))
            if round_index:
                forward_times[mode].append(elapsed)
    return {"base": base, "modules": len(modules), "patch": {k: summary(v) for k, v in patch_times.items()},
            "forward": {k: summary(v) for k, v in forward_times.items()}, "latent": latent}


# --------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}×" if b else "–"


KRONA, LORA, FLOOR = "KronA (64, 8) efficient", "PEFT LoRA r4", "no adapter"


def targets(results: dict) -> list[tuple[str, str, bool, str]]:
    """(target, measured, met, why-if-missed) for each target of the benchmark issue."""
    rows = []
    def noise(who: str) -> str:
        return (f"within this CPU's run-to-run spread: the rounds' [min, max] of {who} overlap, so the "
                "order of the medians is not a property of the code; a quieter machine or more rounds decides it")

    for base, by_latent in results.get("training", {}).items():
        for latent, c in by_latent.items():
            k, lo, fl = c[KRONA], c[LORA], c[FLOOR]
            overlap = k["time"]["min"] <= lo["time"]["max"]
            value = k["time"]["median"] / lo["time"]["median"]
            rows.append((f"{base} {latent}×{latent}: step ≤ 1.00× LoRA r4", f"{value:.3f}×", value <= 1.0,
                         noise("KronA and LoRA") if overlap else "the Kronecker product's two small GEMMs per layer cost more than "
                         "LoRA's two thin ones at this size (see the per-layer table)"))
            over = k["time"]["median"] - fl["time"]["median"]
            for peer, limit in (("LyCORIS LoKr", 0.25), ("LyCORIS LoKr bypass", 1.0)):
                peer_over = c[peer]["time"]["median"] - fl["time"]["median"]
                value = over / peer_over if peer_over > 0 else float("inf")
                rows.append((f"{base} {latent}×{latent}: overhead ≤ {limit}× {peer}'s", f"{value:.2f}× ({over:+.3f} s vs {peer_over:+.3f} s)",
                             value <= limit, "the overheads are differences of two noisy medians; at this size they are "
                             "a few percent of the step, so the ratio swings with the floor's spread"))
            value = k["peak_bytes"] / lo["peak_bytes"]
            rows.append((f"{base} {latent}×{latent}: peak memory ≤ 1.0× LoRA r4", f"{value:.3f}×", value <= 1.0,
                         "the w2-first product keeps its (tokens, a2, b1) intermediate for backward, an eighth of an "
                         "activation per layer at (64, 8), against LoRA's rank-4 one"))
    for r in results.get("layers", []):
        fwd, train = r["kron_ms"] / r["gemms_ms"], r["kron_train_ms"] / r["gemms_train_ms"]
        rows.append((f"layer {r['shape']}: ≤ 1.1× its 2 GEMMs", f"{fwd:.2f}× fwd, {train:.2f}× fwd+bwd", max(fwd, train) <= 1.1,
                     "the lower bound runs the w1 product as one GEMM on (tokens·b1, a2) rows and ignores the output "
                     "layout; the real product needs w1 per token (a batched GEMM with b1 = 5–20 columns, below peak) "
                     "and its backward one transposed copy of the output gradient. A kernel that writes the GEMM's "
                     "result transposed (a custom CPU/Triton kernel) would close it; plain torch ops cannot"))
    for row in results.get("params", []):
        rows.append((f"{row['base']}: parameters reported vs LoRA r4", f"{row['krona']:,} vs {row['lora']:,}", True, ""))
    if results.get("comfy"):
        c = results["comfy"]
        ref = c["patch"]["LoraLoader, same KronA file"]
        value = c["patch"]["Apply KronA (merge)"]["median"] / ref["median"]
        rows.append(("Apply KronA (merge) ≤ 1.0× LoraLoader, same file", f"{value:.3f}×", value <= 1.0, noise("both")))
        merged, bypass = c["forward"]["merged"]["median"], c["forward"]["bypass"]["median"]
        value = 100 * (bypass / merged - 1)
        rows.append(("bypass sampling overhead ≤ 5%", f"{value:+.1f}%", value <= 5.0,
                     "bypass runs two extra small GEMMs per adapted layer and step, which merge pays once at patch time"))
    return rows


def write_report(results: dict, out: Path, quick: bool) -> str:
    lines = ["# Benchmarks: KronA vs LoRA / LoKr peers", ""]
    meta = results["meta"]
    lines.append(f"{meta['date']} · {meta['machine']} · {meta['cpus']} CPU threads · device: {meta.get('device', 'CPU')} · Python {meta['python']} · "
                 f"torch {meta['torch']} · diffusers {meta['diffusers']} · peft {meta['peft']} · lycoris-lora {meta['lycoris']}"
                 + (" · **QUICK MODE: code paths only, the numbers mean nothing**" if quick else ""))
    lines += ["", "## Trainable parameters (attention q/k/v/out, real architectures)", "",
              "| base | layers | KronA (64, 8) | LoRA r4 | KronA / LoRA |", "|---|---:|---:|---:|---:|"]
    for row in results["params"]:
        lines.append(f"| {row['base']} | {row['layers']} | {row['krona']:,} | {row['lora']:,} | {row['krona'] / row['lora']:.3f}× |")
    lines += ["", f"## Per layer: base output + ΔW·x, {results['layers_tokens']} tokens, fp32, {meta.get('device', 'CPU')} (median of repeats)", "",
              "Each cell: forward ms / forward + backward ms. \"its 2 GEMMs\" is the zero-overhead lower bound "
              "(the same two products on operands that need no layout change).", "",
              "| layer | factors | order | KronA | w1-first | w2-first | its 2 GEMMs | KronA / GEMMs | materialised | LoRA r4 | MFLOP KronA | MFLOP LoRA r4 |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(r: dict, name: str) -> str:
        return f"{r[name + '_ms']:.3f} / {r[name + '_train_ms']:.3f}"

    for r in results["layers"]:
        vs_gemms = f"{r['kron_ms'] / r['gemms_ms']:.2f}× / {r['kron_train_ms'] / r['gemms_train_ms']:.2f}×"
        lines.append(f"| {r['shape']} | {r['factors']} | {r['order']} | {cell(r, 'kron')} | {cell(r, 'w1_first')} | "
                     f"{cell(r, 'w2_first')} | {cell(r, 'gemms')} | {vs_gemms} | {cell(r, 'materialised')} | "
                     f"{cell(r, 'lora_r4')} | {r['kron_mflops']:.1f} | {r['lora_mflops']:.1f} |")
    for base, by_latent in results["training"].items():
        for latent, configs in by_latent.items():
            floor = configs["no adapter"]["time"]["median"]
            lora = configs["PEFT LoRA r4"]
            lines += ["", f"## Training step: {base} UNet, latent {latent}×{latent}, fp32, batch 1, {meta.get('device', 'CPU')} "
                      f"(median [min, max] of {len(results['rounds'])} interleaved rounds)", "",
                      "| adapter | params | file | step s | vs LoRA r4 | vs floor | overhead s | peak MiB | peak vs LoRA r4 | peak vs floor |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for name, c in configs.items():
                t = c["time"]
                size = f"{c.get('file_bytes', 0) / 2**20:.2f} MiB" if c.get("file_bytes") else "–"
                lines.append(f"| {name} | {c['params']:,} | {size} | {t['median']:.3f} [{t['min']:.3f}, {t['max']:.3f}] | "
                             f"{ratio(t['median'], lora['time']['median'])} | {ratio(t['median'], floor)} | {t['median'] - floor:+.3f} | "
                             f"{c['peak_bytes'] / 2**20:.1f} | {ratio(c['peak_bytes'], lora['peak_bytes'])} | "
                             f"{ratio(c['peak_bytes'], configs['no adapter']['peak_bytes'])} |")
    if results.get("comfy"):
        c = results["comfy"]
        lines += ["", f"## ComfyUI: patching a {c['base']}-size file ({c['modules']} attention modules) on CPU", "",
                  "| case | patch s (median [min, max]) | vs LoraLoader same file |", "|---|---:|---:|"]
        ref = c["patch"]["LoraLoader, same KronA file"]["median"]
        for name, t in c["patch"].items():
            lines.append(f"| {name} | {t['median']:.3f} [{t['min']:.3f}, {t['max']:.3f}] | {ratio(t['median'], ref)} |")
        merged, bypass = c["forward"]["merged"]["median"], c["forward"]["bypass"]["median"]
        lines += ["", f"Sampling step (one diffusion-model forward, latent {c['latent']}×{c['latent']}): merged {merged:.3f} s, "
                  f"bypass {bypass:.3f} s → bypass overhead {100 * (bypass / merged - 1):+.1f}%."]
    lines += ["", "## Targets (issue 8)", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok, _why in targets(results)]
    missed: dict[str, list[str]] = {}  # one reason, every target it explains
    for t, _m, ok, why in targets(results):
        if not ok:
            missed.setdefault(why, []).append(t)
    if missed:
        lines += ["", "Why the missed ones were missed:", ""] + [f"- *{'; '.join(ts)}*: {why}" for why, ts in missed.items()]
    text = "\n".join(lines) + "\n"
    out.write_text(text, encoding="utf-8")
    return text


def plot(results: dict, path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    panels = [(base, latent, configs) for base, by in results["training"].items() for latent, configs in by.items()]
    width, row_h = 760, 24
    height = 40 + sum(40 + row_h * len(c) for _, _, c in panels)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((10, 10), "training step time relative to PEFT LoRA r4 (1.0 = LoRA)", fill="black", font=font)
    y = 40
    for base, latent, configs in panels:
        draw.text((10, y), f"{base}, latent {latent}×{latent}", fill="black", font=font)
        y += 20
        ref = configs["PEFT LoRA r4"]["time"]["median"]
        scale = (width - 260) / max(c["time"]["median"] / ref for c in configs.values()) / 1.05
        for name, c in configs.items():
            value = c["time"]["median"] / ref
            color = (25, 80, 170) if name.startswith("KronA") else (150, 150, 150)
            draw.text((10, y + 4), name, fill="black", font=font)
            draw.rectangle([200, y + 3, 200 + value * scale, y + row_h - 5], fill=color)
            draw.text((205 + value * scale, y + 4), f"{value:.3f}", fill="black", font=font)
            y += row_h
        x = 200 + scale
        draw.line([(x, y - row_h * len(configs)), (x, y)], fill=(200, 60, 60))
        y += 20
    image.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny UNet, one round: exercise every code path only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bases", default="sd1,sdxl")
    parser.add_argument("--latents", default=None, help="comma-separated latent sizes (default 32,64 on CPU, 64,128 on GPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] for training steps and the per-layer bench "
                        "(default: cuda when available); ComfyUI patch times are always taken on the CPU")
    parser.add_argument("--out", default=str(ROOT / "bench"))
    parser.add_argument("--only", default=None, help="comma-separated sections to re-run (params, layers, training, comfy); "
                        "the others are kept from the existing results JSON")
    args = parser.parse_args(argv)
    global DEVICE
    if args.device:
        DEVICE = torch.device(args.device)
    only = set(args.only.split(",")) if args.only else {"params", "layers", "training", "comfy"}
    from diffusers import UNet2DConditionModel  # noqa: F401  (before ComfyUI's path: see below)

    if os.environ.get("COMFYUI_PATH"):
        CONFIGS["ComfyUI trainer LoKr"] = lambda u: comfy_lokr(u)
        sys.path.insert(0, os.environ["COMFYUI_PATH"])
        try:
            import torchvision  # noqa: F401
        except Exception:
            sys.path.insert(1, str(ROOT / "tests" / "host_stubs"))  # ComfyUI imports it in families SD never uses
        import comfy.cli_args

        comfy.cli_args.args.cpu = not torch.cuda.is_available()
    import diffusers
    import lycoris  # noqa: F401
    import peft
    from importlib.metadata import version

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds = 1 if args.quick else args.rounds
    suffix = "-quick" if args.quick else ""
    latents = [int(v) for v in args.latents.split(",")] if args.latents else ([8] if args.quick else [64, 128] if DEVICE.type == "cuda" else [32, 64])
    previous = out / f"results{suffix}.json"
    kept = json.loads(previous.read_text()) if args.only and previous.is_file() else {}
    results: dict = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                              "cpus": torch.get_num_threads(),
                              "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU", "python": platform.python_version(), "torch": torch.__version__,
                              "diffusers": diffusers.__version__, "peft": peft.__version__, "lycoris": version("lycoris-lora")},
                     "rounds": list(range(rounds))}
    results.update({k: v for k, v in kept.items() if k not in ("meta",)})
    if "params" in only:
        results["params"] = [vars(unet_counts(b)) for b in ("sd1", "sd2", "sdxl")]
    if "layers" in only:
        results["layers_tokens"] = 256 if args.quick else 4096
        results["layers"] = bench_layers(results["layers_tokens"], 3 if args.quick else 30)
    if "training" in only:
        results["training"] = {}
    for base in (args.bases.split(",") if "training" in only else []):
        unet = None
        if args.quick:
            unet = build_unet(base, device="cpu", block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                              attention_head_dim=4, transformer_layers_per_block=1,
                              **({"projection_class_embeddings_input_dim": 8 + 6 * 8, "addition_time_embed_dim": 8,
                                  "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                                  "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")} if base == "sdxl" else
                                 {"down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                                  "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")}))
        print(f"training steps on {base} …", flush=True)
        results["training"][base] = bench_training(base, latents, rounds, unet)
        del unet
        gc.collect()
        (out / f"results{suffix}.json").write_text(json.dumps(results, indent=1, default=str))  # partial results survive
    if os.environ.get("COMFYUI_PATH") and "comfy" in only:
        print("ComfyUI patch times …", flush=True)
        results["comfy"] = bench_comfy(rounds, args.quick)
    (out / f"results{suffix}.json").write_text(json.dumps(results, indent=1, default=str))
    text = write_report(results, out / f"RESULTS{suffix}.md", args.quick)
    plot(results, out / f"step-times{suffix}.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

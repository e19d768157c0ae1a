"""Conversions between KronA and the adapter files people already have.

Every reader refuses keys it does not understand (naming the key) instead of dropping them.
Conversions are exact where the math allows — any LyCORIS LoKr variant is a scaled Kronecker
product; a KronA or an official DiffuseKronA module is an exact LoRA of rank rank(A)·rank(B) —
and otherwise report their error per layer and in total (nearest Kronecker product).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from . import keymap
from .format import KronAFile, build_metadata
from .kron import KronShape, choose_shape, kron_rearrange, materialise, nearest_kronecker, plan_budget


class ConvertError(ValueError):
    """A source file that cannot be converted; the message names the file and key."""


# --------------------------------------------------------------------------- reading sources


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and metadata of a .safetensors file (never pickle)."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ConvertError(f"{path}: only .safetensors files are read (never pickle)")
    try:
        with safe_open(path, "pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise ConvertError(f"{path}: cannot read as safetensors ({exc})") from None


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_OFFICIAL = re.compile(r"^(?:unet\.)?(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_LOKR = re.compile(r"^(lora_(?:unet|te1|te2|te)_[A-Za-z0-9_]+)\.(lokr_w1|lokr_w2|lokr_w1_a|lokr_w1_b|lokr_w2_a|lokr_w2_b|lokr_t2|alpha)$")
_KOHYA_LORA = re.compile(r"^(lora_(?:unet|te1|te2|te)_[A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|lora_mid\.weight|alpha)$")
_PEFT_LORA = re.compile(r"^(?:(unet|text_encoder|text_encoder_2)\.)?(.+?)\.(lora_A|lora_B)(?:\.default)?\.weight$|^(?:(unet|text_encoder|text_encoder_2)\.)?(.+?)\.alpha$")
_COMFY_LORA = re.compile(r"^((?:diffusion_model|text_encoders)\..+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def detect_format(keys: Sequence[str], tensors: Mapping[str, torch.Tensor] | None = None) -> str:
    """'krona'/'lokr' (LyCORIS LoKr, full or decomposed), 'lora' (kohya), 'peft' (diffusers/PEFT),
    'comfy-lora' (ComfyUI trainer), 'official' (IBM DiffuseKronA) — from the keys (and shapes)."""
    keys = list(keys)
    if not keys:
        raise ConvertError("the file holds no tensors")
    if all(_OFFICIAL.match(k) for k in keys):
        if tensors is not None and _official_looks_like_lora(keys, tensors):
            return "peft"  # the old diffusers attention-processor LoRA uses the same names
        return "official"
    if all(_LOKR.match(k) for k in keys):
        decomposed = any(k.endswith(("_a", "_b", "_t2")) for k in keys)
        return "lokr" if decomposed else "krona"
    if all(_KOHYA_LORA.match(k) for k in keys):
        return "lora"
    if all(_COMFY_LORA.match(k) for k in keys):
        return "comfy-lora"
    if all(_PEFT_LORA.match(k) for k in keys):
        return "peft"
    unknown = next(k for k in keys if not any(p.match(k) for p in (_OFFICIAL, _LOKR, _KOHYA_LORA, _PEFT_LORA, _COMFY_LORA)))
    raise ConvertError(f"unknown key {unknown!r}: not KronA, LyCORIS LoKr, kohya/ComfyUI/PEFT LoRA or official DiffuseKronA")


def _official_looks_like_lora(keys: Sequence[str], tensors: Mapping[str, torch.Tensor]) -> bool:
    """LoRA down (r, in) / up (out, r) share r; DiffuseKronA down (a2, a1) / up (b1, b2) do not."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k in keys:
        m = _OFFICIAL.match(k)
        pairs.setdefault(f"{m.group(1)}.{m.group(2)}", {})[m.group(3)] = tensors[k]
    return all(p["up"].shape[1] == p["down"].shape[0] for p in pairs.values() if "up" in p and "down" in p)


# --------------------------------------------------------------------------- naming


@dataclass
class Names:
    """kohya module names for a base, from diffusers / ldm / Hugging Face paths."""

    base: str
    unet_map: keymap.UNetKeyMap

    @classmethod
    def for_base(cls, base: str) -> "Names":
        from .configs import build_unet

        if base not in keymap.BASES:
            raise ConvertError(f"unknown base {base!r}; pass --base sd1, sd2 or sdxl")
        unet = build_unet(base)
        return cls(base, keymap.UNetKeyMap.from_names(n for n, _ in unet.named_modules() if n))

    def unet(self, path: str) -> str:
        return keymap.kohya_module_key(self.base, "unet", path, self.unet_map)

    def text(self, network: str, path: str) -> str:
        index = path.find("text_model.")
        return keymap.kohya_key(network, path[index:] if index >= 0 else "text_model." + path)


def base_from_widths(widths: Mapping[str, int]) -> str:
    """sd1 / sd2 / sdxl from the input width of any attn2 k/v projection (768 / 1024 / 2048)."""
    for name, width in widths.items():
        if re.search(r"attn2[._]to_[kv]", name):
            base = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width)
            if base:
                return base
    raise ConvertError("cannot tell the base model from the cross-attention widths; pass --base sd1, sd2 or sdxl")


# --------------------------------------------------------------------------- sources → ΔW


@dataclass
class Module:
    """One adapted module of a source, in kohya naming: exact factors or a dense ΔW."""

    name: str
    factors: tuple[torch.Tensor, torch.Tensor] | None = None  # plain Kronecker: ΔW = kron(w1, w2)
    delta: Callable[[], torch.Tensor] | None = None  # otherwise: ΔW materialised on demand
    low_rank: tuple[torch.Tensor, torch.Tensor] | None = None  # (up, down) with ΔW = up @ down (2-D views)
    weight_shape: tuple[int, ...] = ()
    official: tuple[torch.Tensor, torch.Tensor] | None = None  # (down, up) of an official DiffuseKronA module

    def dense(self) -> torch.Tensor:
        if self.factors is not None:
            return materialise(*self.factors).double()
        return self.delta().double()


def _group_parts(tensors: Mapping[str, torch.Tensor], pattern: re.Pattern, what: str, path: str) -> dict[str, dict[str, torch.Tensor]]:
    """{module: {part: tensor}} from keys `pattern` splits into (module, part); any other key is refused."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = pattern.match(key)
        if not m:
            raise ConvertError(f"{path}: key {key!r} is not part of a {what} module")
        groups.setdefault(m.group(1), {})[m.group(2)] = value
    return groups


def read_lokr(tensors: Mapping[str, torch.Tensor], path: str = "<memory>") -> dict[str, Module]:
    """Any LyCORIS LoKr variant → exact full factors with the variant's scale baked in.

    Scale: alpha / dim for a decomposed half (dim = that half's rank; when both are decomposed
    the w2 rank, as ComfyUI, A1111 and LyCORIS compute it); 1 when both halves are full.
    """
    groups = {name: {part: v.float() for part, v in parts.items()}
              for name, parts in _group_parts(tensors, _LOKR, "LyCORIS LoKr", path).items()}
    out = {}
    for name, parts in groups.items():
        dim = None
        if "lokr_w1" in parts:
            w1 = parts["lokr_w1"]
        elif "lokr_w1_a" in parts and "lokr_w1_b" in parts:
            w1 = parts["lokr_w1_a"] @ parts["lokr_w1_b"]
            dim = parts["lokr_w1_b"].shape[0]
        else:
            raise ConvertError(f"{path}: module {name} has no lokr_w1 (or lokr_w1_a + lokr_w1_b)")
        if "lokr_w2" in parts:
            w2 = parts["lokr_w2"]
        elif "lokr_w2_a" in parts and "lokr_w2_b" in parts:
            a, b = parts["lokr_w2_a"], parts["lokr_w2_b"]
            dim = b.shape[0]
            if "lokr_t2" in parts:  # Tucker: w2[p, r, k, l] = Σ t2[i, j, k, l] · b[j, r] · a[i, p]
                w2 = torch.einsum("ijkl,jr,ip->prkl", parts["lokr_t2"], b, a)
            else:
                w2 = (a @ b.reshape(b.shape[0], -1)).reshape(a.shape[0], *b.shape[1:])
        else:
            raise ConvertError(f"{path}: module {name} has no lokr_w2 (or lokr_w2_a + lokr_w2_b)")
        scale = 1.0
        if dim is not None and "alpha" in parts:
            scale = float(parts["alpha"]) / dim
        out[name] = Module(name, factors=(w1 * scale, w2))
    return out


def _lora_module(name: str, down: torch.Tensor, up: torch.Tensor, alpha: torch.Tensor | None, mid: torch.Tensor | None = None) -> Module:
    rank = down.shape[0]
    scale = float(alpha) / rank if alpha is not None else 1.0
    out_features = up.shape[0]
    kernel = tuple(down.shape[2:]) if down.dim() == 4 else ()
    if mid is not None:
        raise ConvertError(f"{name}: LoCon Tucker (lora_mid) modules are not supported; convert them without --cp")
    in_features = down.shape[1]
    up2, down2 = up.reshape(out_features, rank).float() * scale, down.reshape(rank, -1).float()
    shape = (out_features, in_features, *kernel)
    return Module(name, delta=lambda: (up2.double() @ down2.double()).reshape(shape), low_rank=(up2, down2), weight_shape=shape)


def read_kohya_lora(tensors: Mapping[str, torch.Tensor], path: str = "<memory>") -> dict[str, Module]:
    groups = _group_parts(tensors, _KOHYA_LORA, "kohya LoRA", path)
    out = {}
    for name, parts in groups.items():
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise ConvertError(f"{path}: module {name} lacks lora_down/lora_up weights")
        out[name] = _lora_module(name, parts["lora_down.weight"], parts["lora_up.weight"], parts.get("alpha"), parts.get("lora_mid.weight"))
    return out


def read_peft_lora(tensors: Mapping[str, torch.Tensor], names: Names, path: str = "<memory>") -> dict[str, Module]:
    """diffusers / PEFT LoRA (`unet.….to_q.lora_A.weight`, `text_encoder.…`) and the old
    attention-processor form (`….processor.to_q_lora.down.weight`)."""
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _OFFICIAL.match(key)
        if m:
            target = m.group(2) + (".0" if m.group(2) == "to_out" else "")
            groups.setdefault(("unet", f"{m.group(1)}.{target}"), {})["down" if m.group(3) == "down" else "up"] = value
            continue
        m = _PEFT_LORA.match(key)
        if not m:
            raise ConvertError(f"{path}: key {key!r} is not part of a diffusers/PEFT LoRA module")
        owner = m.group(1) or m.group(4) or "unet"
        module = m.group(2) or m.group(5)
        part = {"lora_A": "down", "lora_B": "up"}.get(m.group(3), "alpha")
        groups.setdefault((owner, module), {})[part] = value
    networks = {"unet": "unet", "text_encoder": "te1" if names.base == "sdxl" else "te", "text_encoder_2": "te2"}
    out = {}
    for (owner, module), parts in groups.items():
        if "down" not in parts or "up" not in parts:
            raise ConvertError(f"{path}: module {owner}.{module} lacks its lora_A/lora_B (down/up) weights")
        network = networks[owner]
        name = names.unet(module) if network == "unet" else names.text(network, module)
        out[name] = _lora_module(name, parts["down"], parts["up"], parts.get("alpha"))
    return out


def read_comfy_lora(tensors: Mapping[str, torch.Tensor], names: Names, path: str = "<memory>") -> dict[str, Module]:
    """LoRA files ComfyUI's trainer writes: `diffusion_model.<ldm path>.lora_down.weight` …"""
    groups = _group_parts(tensors, _COMFY_LORA, "ComfyUI LoRA", path)
    out = {}
    for module, parts in groups.items():
        if not module.startswith("diffusion_model."):
            raise ConvertError(f"{path}: {module!r}: only diffusion-model modules of ComfyUI LoRAs are converted")
        name = names.unet(module[len("diffusion_model."):])
        out[name] = _lora_module(name, parts["lora_down.weight"], parts["lora_up.weight"], parts.get("alpha"))
    return out


def official_delta(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """ΔW of an official DiffuseKronA module: ΔW[p·a1 + q, i·b2 + j] = down[i, q] · up[p, j].

    down (a2, a1), up (b1, b2); this is kron(downᵀ, up) with its rows shuffled (q·b1 + p → p·a1 + q),
    not a plain Kronecker product.
    """
    a2, a1 = down.shape
    b1, b2 = up.shape
    return torch.einsum("iq,pj->pqij", down.double(), up.double()).reshape(b1 * a1, a2 * b2)


def read_official(tensors: Mapping[str, torch.Tensor], names: Names, path: str = "<memory>") -> dict[str, Module]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _OFFICIAL.match(key)
        if not m:
            raise ConvertError(f"{path}: key {key!r} is not an official DiffuseKronA key")
        target = m.group(2) + (".0" if m.group(2) == "to_out" else "")
        groups.setdefault(f"{m.group(1)}.{target}", {})[m.group(3)] = value.float()
    out = {}
    for module, parts in groups.items():
        if "down" not in parts or "up" not in parts:
            raise ConvertError(f"{path}: module {module} lacks its down or up weight")
        down, up = parts["down"], parts["up"]
        name = names.unet(module)
        a2, a1 = down.shape
        b1, b2 = up.shape
        out[name] = Module(name, delta=lambda d=down, u=up: official_delta(d, u), weight_shape=(a1 * b1, a2 * b2),
                           official=(down, up))
    return out


@dataclass
class Source:
    path: str
    format: str
    base: str | None
    modules: dict[str, Module]
    metadata: dict[str, str] = field(default_factory=dict)
    sha256: str = ""

    @property
    def trigger_words(self) -> list[str]:
        if "krona.trigger_words" in self.metadata:
            import json

            return list(json.loads(self.metadata["krona.trigger_words"]))
        phrase = self.metadata.get("modelspec.trigger_phrase", "")
        return [w.strip() for w in phrase.split(",") if w.strip()]


def _widths(modules: Mapping[str, Module]) -> dict[str, int]:
    out = {}
    for name, module in modules.items():
        if module.factors is not None:
            out[name] = module.factors[0].shape[1] * module.factors[1].shape[1]
        elif module.weight_shape:
            out[name] = module.weight_shape[1]
    return out


def _source_widths(fmt: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Input width per module name (dotted) of an unconverted source, for base detection."""
    widths = {}
    for key, value in tensors.items():
        m = _OFFICIAL.match(key)
        if m and m.group(3) == "down":
            up = tensors.get(key[: -len("down.weight")] + "up.weight")
            if up is not None:  # official: in = a2·b2; old diffusers LoRA: down (r, in)
                widths[f"{m.group(1)}.{m.group(2)}"] = value.shape[0] * up.shape[1] if fmt == "official" else value.shape[1]
        elif key.endswith(("lora_A.weight", "lora_A.default.weight", "lora_down.weight")) and value.dim() >= 2:
            widths[key] = value.shape[1]
    return widths


def read_source(path: str | os.PathLike, base: str | None = None) -> Source:
    """Read any supported adapter file into kohya-named modules."""
    path = os.fspath(path)
    tensors, metadata = load_tensors(path)
    fmt = detect_format(list(tensors), tensors)
    base = base or metadata.get("krona.base_model") or None
    if base in ("unknown", ""):
        base = None
    if fmt in ("krona", "lokr"):
        modules = read_lokr(tensors, path)
    elif fmt == "lora":
        modules = read_kohya_lora(tensors, path)
    else:
        if base is None:  # names must be mapped, which needs the base's layout
            base = base_from_widths(_source_widths(fmt, tensors))
        names = Names.for_base(base)
        reader = {"peft": read_peft_lora, "comfy-lora": read_comfy_lora, "official": read_official}[fmt]
        modules = reader(tensors, names, path)
    if base is None:
        try:
            base = base_from_widths(_widths(modules))
        except ConvertError:
            base = None
    return Source(path, fmt, base, modules, metadata, sha256_file(path))


# --------------------------------------------------------------------------- KronA ↔ LoRA math


def kron_to_lora(w1: torch.Tensor, w2: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up, down, rel_error) with kron(w1, w2) ≈ up @ down (2-D; conv kernels flattened into down).

    The SVD of a Kronecker product is the Kronecker product of the factors' SVDs, so the exact
    LoRA has rank rank(w1)·rank(w2) and the best rank-R truncation keeps the R largest products
    σ1_i · σ2_j — computed from the two small SVDs, never from the big ΔW.
    """
    a = w1.double()
    b = w2.double().reshape(w2.shape[0], -1)
    u1, s1, v1 = torch.linalg.svd(a, full_matrices=False)
    u2, s2, v2 = torch.linalg.svd(b, full_matrices=False)
    products = torch.outer(s1, s2).flatten()
    tol = products.max() * max(a.shape + b.shape) * torch.finfo(torch.float64).eps * 8 if products.numel() else 0
    order = torch.argsort(products, descending=True)
    keep = order[products[order] > tol]
    if rank is not None:
        keep = keep[:rank]
    i, j = keep // s2.numel(), keep % s2.numel()
    sigma = products[keep]
    # columns of kron(U1, U2) and kron(V1, V2) for the kept (i, j) pairs
    left = torch.einsum("ak,bk->abk", u1[:, i], u2[:, j]).reshape(a.shape[0] * b.shape[0], -1)
    right = torch.einsum("ak,bk->abk", v1[i].T, v2[j].T).reshape(a.shape[1] * b.shape[1], -1)
    root = sigma.sqrt()
    up = left * root
    down = (right * root).T
    total = float((products ** 2).sum())
    dropped = torch.ones(products.numel(), dtype=torch.bool)
    dropped[keep] = False
    rel = math.sqrt(float((products[dropped] ** 2).sum()) / total) if total > 0 else 0.0
    return up.float(), down.float(), rel


def dense_to_lora(delta: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Truncated SVD of a dense ΔW (exact at its numerical rank)."""
    mat = delta.double().reshape(delta.shape[0], -1)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    tol = s.max() * max(mat.shape) * torch.finfo(torch.float64).eps * 8 if s.numel() else 0
    r = int((s > tol).sum())
    if rank is not None:
        r = min(r, rank)
    root = s[:r].sqrt()
    total = float((s ** 2).sum())
    rel = math.sqrt(float((s[r:] ** 2).sum()) / total) if total > 0 else 0.0
    return (u[:, :r] * root).float(), (root[:, None] * vh[:r]).float(), rel


def lora_tensors(name: str, up: torch.Tensor, down: torch.Tensor, weight_shape: Sequence[int], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """kohya tensors for ΔW = up · down · alpha / rank with alpha = rank (scale 1)."""
    rank = up.shape[1]
    out_features, in_features, *kernel = weight_shape
    return {
        f"{name}.lora_up.weight": up.reshape(out_features, rank, *([1] * len(kernel))).to(dtype).contiguous(),
        f"{name}.lora_down.weight": down.reshape(rank, in_features, *kernel).to(dtype).contiguous(),
        f"{name}.alpha": torch.tensor(float(rank), dtype=dtype),
    }


# --------------------------------------------------------------------------- → KronA


class ErrorTally:
    """Per-module relative errors and the total over all modules, √(Σ‖ΔW − fit‖²) / √(Σ‖ΔW‖²)."""

    def __init__(self):
        self.errors: dict[str, float] = {}
        self._squared_error = 0.0
        self._squared_norm = 0.0

    def add(self, name: str, rel_error: float, squared_norm: float) -> None:
        self.errors[name] = rel_error
        self._squared_norm += squared_norm
        self._squared_error += rel_error ** 2 * squared_norm

    @property
    def total(self) -> float:
        return math.sqrt(self._squared_error / self._squared_norm) if self._squared_norm > 0 else 0.0


def fit_kronecker(dense: torch.Tensor, shape: KronShape) -> tuple[tuple[torch.Tensor, torch.Tensor], float, float]:
    """((w1, w2), relative error, ‖ΔW‖²) of the nearest Kronecker product at `shape`."""
    fit = nearest_kronecker(dense, shape.a1, shape.a2)
    return (fit.w1[0].float(), fit.w2[0].float()), fit.rel_error, float((dense ** 2).sum())


def nearest_error_cost(module: Module) -> Callable[[KronShape], float]:
    """Absolute squared nearest-Kronecker error of a module for a candidate shape (exact, via the
    Gram matrix of the Van Loan–Pitsianis rearrangement)."""
    dense = module.dense()
    total = float((dense ** 2).sum())
    cache: dict[tuple[int, int], float] = {}

    def cost(shape: KronShape) -> float:
        key = (shape.a1, shape.a2)
        if key not in cache:
            r = kron_rearrange(dense, shape.a1, shape.a2)
            gram = r @ r.T if r.shape[0] <= r.shape[1] else r.T @ r
            top = float(torch.linalg.eigvalsh(gram)[-1])
            cache[key] = max(total - top, 0.0)
        return cache[key]

    return cost


@dataclass
class Conversion:
    file: KronAFile
    errors: dict[str, float]  # per module: ‖ΔW − kron‖ / ‖ΔW‖
    total_error: float  # over all modules: √(Σ‖ΔW − kron‖²) / √(Σ‖ΔW‖²)


def to_krona(source: Source, a1: int = 64, a2: int = 8, budget: int | None = None,
             progress: Callable[[str], None] | None = None) -> Conversion:
    """Exact for Kronecker sources (.krona, any LoKr); nearest Kronecker product otherwise."""
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    tally = ErrorTally()
    exact = {n: m for n, m in source.modules.items() if m.factors is not None}
    approx = {n: m for n, m in source.modules.items() if m.factors is None}
    for name, module in exact.items():
        w1, w2 = module.factors
        modules[name] = (w1.float(), w2.float())
        tally.add(name, 0.0, float(w1.double().norm() ** 2 * w2.double().norm() ** 2))
    if approx:
        shapes_of = {n: m.weight_shape or tuple(m.dense().shape) for n, m in approx.items()}
        if budget is not None:
            costs = {n: nearest_error_cost(m) for n, m in approx.items()}
            remaining = budget - sum(KronShape.from_factors(w1.shape, w2.shape).params for w1, w2 in modules.values())
            plan = plan_budget(shapes_of, remaining, a1, a2, cost=lambda n, s: costs[n](s))
        else:
            plan = {n: choose_shape(s, a1, a2) for n, s in shapes_of.items()}
        for index, (name, module) in enumerate(approx.items()):
            if progress:
                progress(f"{index + 1}/{len(approx)} {name}")
            modules[name], rel_error, norm2 = fit_kronecker(module.dense(), plan[name])
            tally.add(name, rel_error, norm2)
    errors, total_error = tally.errors, tally.total
    provenance = {"source": os.path.basename(source.path), "source_sha256": source.sha256, "source_format": source.format,
                  "conversion": "exact" if not approx else ("budget" if budget else "nearest-kronecker"),
                  "total_rel_error": total_error, "max_layer_rel_error": max(errors.values(), default=0.0)}
    title = os.path.basename(source.path).split(".")[0]
    metadata = build_metadata(modules, base_model=source.base, title=title, trigger_words=source.trigger_words,
                              factor_rule={"mode": "budget", "budget": budget, "a1": a1, "a2": a2} if budget else
                              ({"mode": "factors", "a1": a1, "a2": a2} if approx else {"mode": "source"}),
                              training=json_or_none(source.metadata.get("krona.training")), provenance=provenance)
    return Conversion(KronAFile(f"<memory>/{title}", modules, metadata), errors, total_error)


def json_or_none(text: str | None) -> Any:
    import json

    return json.loads(text) if text else None


def to_lora(source: Source, rank: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, float], float]:
    """kohya LoRA tensors; exact at sufficient rank, else truncated with the error reported."""
    tensors: dict[str, torch.Tensor] = {}
    tally = ErrorTally()
    for name, module in source.modules.items():
        if module.factors is not None:
            w1, w2 = module.factors
            up, down, rel = kron_to_lora(w1, w2, rank)
            shape = KronShape.from_factors(w1.shape, w2.shape).weight_shape
            norm2 = float(w1.double().norm() ** 2 * w2.double().norm() ** 2)
        elif module.official is not None:
            down_o, up_o = module.official
            up, down, rel = official_to_lora(down_o, up_o, rank)
            shape = module.weight_shape
            norm2 = float(down_o.double().norm() ** 2 * up_o.double().norm() ** 2)
        else:
            dense = module.dense()
            up, down, rel = dense_to_lora(dense, rank)
            shape = tuple(dense.shape)
            norm2 = float((dense ** 2).sum())
        tensors.update(lora_tensors(name, up, down, shape, torch.float32))
        tally.add(name, rel, norm2)
    return tensors, tally.errors, tally.total


def official_to_lora(down: torch.Tensor, up: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Exact (or truncated) LoRA of an official module: the row shuffle moves onto `up`."""
    a2, a1 = down.shape
    b1, b2 = up.shape
    lora_up, lora_down, rel = kron_to_lora(down.T.contiguous(), up, rank)  # rows of kron(downᵀ, up): q·b1 + p
    shuffled = lora_up.reshape(a1, b1, -1).transpose(0, 1).reshape(a1 * b1, -1)  # → rows p·a1 + q
    return shuffled, lora_down, rel

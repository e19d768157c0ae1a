"""The KronA API's request schemas (train, convert) and their validation: field types, ranges and
choices, so that what a request may cost is bounded (steps, resolution, class images) and a
malformed request is answered 422 naming the field — never a 500."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class RequestError(ValueError):
    """A request that does not fit its schema; the message names the field."""


def _bounds(low: float | None = None, high: float | None = None, choices: tuple = (), max_len: int = 4096) -> dict:
    return {"low": low, "high": high, "choices": choices, "max_len": max_len}


@dataclass
class TrainRequest:
    images_dir: str
    instance_prompt: str
    name: str = field(default="krona", metadata=_bounds(max_len=100))
    steps: int = field(default=0, metadata=_bounds(0, 20_000))  # 0: the family's default (500 SD1/SD2, 1000 SDXL)
    learning_rate: float = field(default=1e-3, metadata=_bounds(1e-8, 1.0))
    a1: int = field(default=64, metadata=_bounds(1, 4096))
    a2: int = field(default=8, metadata=_bounds(1, 4096))
    targets: str = "attn"
    seed: int = field(default=0, metadata=_bounds(0, 2 ** 63 - 1))
    resolution: int = field(default=0, metadata=_bounds(0, 2048))  # 0: the family's default (512; SDXL 1024)
    grad_accum: int = field(default=4, metadata=_bounds(1, 64))
    batch_size: int = field(default=1, metadata=_bounds(1, 16))
    schedule: str = field(default="constant", metadata=_bounds(choices=("constant", "cosine", "linear")))
    class_prompt: str = ""
    num_class_images: int = field(default=0, metadata=_bounds(0, 1000))
    train_text_encoder: bool = False
    trigger_words: str = ""
    tokenizer_dir: str = ""
    checkpoint_every: int = field(default=0, metadata=_bounds(0, 20_000))

    def __post_init__(self) -> None:
        if 0 < self.resolution < 64:
            raise RequestError(f"field 'resolution': 0 (the model's default) or 64 … 2048, got {self.resolution}")


@dataclass
class ConvertRequest:
    src: str
    dst: str
    to: str = field(default="", metadata=_bounds(choices=("", "krona", "lora", "diff")))
    a1: int = field(default=64, metadata=_bounds(1, 4096))
    a2: int = field(default=8, metadata=_bounds(1, 4096))
    budget: int = field(default=0, metadata=_bounds(0, 10 ** 9))  # 0: use a1/a2
    rank: int = field(default=0, metadata=_bounds(0, 4096))  # 0: exact rank


def _value(f: dataclasses.Field, value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    rules = {**_bounds(), **dict(f.metadata)}
    if kind == "bool":
        if not isinstance(value, bool):
            raise RequestError(f"field {f.name!r}: expected true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str) or len(value) > rules["max_len"]:
            raise RequestError(f"field {f.name!r}: expected a string of at most {rules['max_len']} characters")
        if rules["choices"] and value not in rules["choices"]:
            raise RequestError(f"field {f.name!r}: expected one of {list(rules['choices'])}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"field {f.name!r}: expected a number, got {value!r}")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise RequestError(f"field {f.name!r}: expected a whole number, got {value!r}")
        value = int(value)
    elif not math.isfinite(value):
        raise RequestError(f"field {f.name!r}: expected a finite number, got {value!r}")
    low, high = rules["low"], rules["high"]
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f"field {f.name!r}: expected {low:g} … {high:g}, got {value!r}")
    return float(value) if kind == "float" else value


def parse_request(cls: type[T], payload: Any) -> T:
    """`cls` from a JSON object: unknown or missing fields, wrong types and out-of-range values
    raise RequestError naming the field."""
    if not isinstance(payload, Mapping):
        raise RequestError("the request body must be a JSON object")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(payload) - set(known))
    if unknown:
        raise RequestError(f"unknown fields {unknown}; expected {sorted(known)}")
    missing = [n for n, f in known.items() if n not in payload and f.default is dataclasses.MISSING]
    if missing:
        raise RequestError(f"missing fields {missing}")
    return cls(**{name: _value(known[name], value) for name, value in payload.items()})

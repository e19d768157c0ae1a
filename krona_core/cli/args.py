"""The CLI's argument rules: a parser whose usage errors are one line (exit status 2), and `type=`
validators for every numeric flag, so a bad number is refused before anything runs."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn

PROG = "krona"
USAGE_ERROR = 2  # bad command line: unknown flag, missing argument, bad number
REFUSED = 1  # the command ran and refused its input: a bad file, a missing folder…


class UsageError(Exception):
    """A command line that is inconsistent in a way argparse cannot see (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (`krona: error: …`) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split(" ", 2)[-1] if " " in self.prog else ""
        hint = f"`{PROG} {command} --help`" if command and command != self.prog else f"`{PROG} --help`"
        print(f"{PROG}: error: {message} (see {hint})", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An int in [low, high] (no upper bound when high is None)."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected a whole number {'≥ ' + str(low) if high is None else f'in {low} … {high}'}, "
                                             f"got {text!r}")
        return value

    return parse


def float_range(low: float | None = None, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high] ((low, high] with low_open)."""

    def parse(text: str) -> float:
        value = _number(text, float)
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"expected a number {'>' if low_open else '≥'} {low:g}, got {text!r}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"expected a number ≤ {high:g}, got {text!r}")
        return value

    return parse


def float_list(text: str) -> list[float]:
    """Comma-separated finite numbers ("1,0.5,-0.2")."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return [_number(p, float) for p in parts]


#: the dtype names of the commands' --base-dtype / --dtype options
DTYPE_NAMES = ("fp32", "bf16", "fp16")


def torch_dtype(name: str):
    """The torch dtype of one of DTYPE_NAMES (torch is imported only when a command runs)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


positive = int_range(1)
non_negative = int_range(0)
factor = int_range(1, 4096)
finite = float_range()
positive_float = float_range(0.0, low_open=True)
share = float_range(0.0, 1.0)

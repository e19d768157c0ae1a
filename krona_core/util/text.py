"""Text from files shown on a terminal or in a UI: control characters (ANSI escapes, carriage
returns, bells, C1 codes, bidi overrides) escaped, so a file's metadata cannot drive the terminal."""

from __future__ import annotations

import unicodedata


def printable(text: str) -> str:
    """`text` with every control or format character (Unicode categories Cc, Cf) written as \\xNN /
    \\uNNNN, and a tab as a space; everything else, non-ASCII letters included, unchanged."""
    out = []
    for char in str(text):
        if char == "\t":
            out.append(" ")
        elif unicodedata.category(char) in ("Cc", "Cf"):
            out.append(char.encode("unicode_escape").decode("ascii") if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
        else:
            out.append(char)
    return "".join(out)

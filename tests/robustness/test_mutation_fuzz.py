"""Mutation fuzz of the one reader: thousands of seeded mutations of a good file (bytes flipped,
inserted, deleted, truncated; header JSON values swapped for hostile ones; duplicate and
near-miss keys). Every mutant either loads or raises the pack's own error — KronAFileError from
`load`, ConvertError from `convert`'s reader — never another exception; the counts are printed."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

from hostile_corpus import good_krona, raw

from krona_core.convert.errors import ConvertError
from krona_core.convert.sources import read_source
from krona_core.files.model import KronAFileError
from krona_core.files.reader import parse, read_summary

MUTANTS = 5000
HOSTILE_VALUES = [None, True, -1, 0, 2 ** 64, 1e308, float("nan"), "", "F16", "I64", "X", [], [0], [-1, 2], [2 ** 62, 2],
                  {}, {"a": 1}, "²", "\x1b[2J", "1\n", [[1]], [1.5, 2]]


def _byte_mutation(blob: bytes, rng: random.Random) -> bytes:
    data = bytearray(blob)
    kind = rng.randrange(5)
    at = rng.randrange(len(data))
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 2:
        del data[at: at + rng.randint(1, 64)]
    elif kind == 3:
        data = data[:at]
    else:
        data[:8] = struct.pack("<Q", max(0, struct.unpack("<Q", bytes(data[:8]))[0] + rng.randint(-40, 40)))
    return bytes(data)


def _header_mutation(blob: bytes, rng: random.Random) -> bytes:
    n = struct.unpack("<Q", blob[:8])[0]
    header, data = json.loads(blob[8:8 + n]), blob[8 + n:]
    keys = [k for k in header if k != "__metadata__"]
    key = rng.choice(keys)
    kind = rng.randrange(6)
    if kind == 0:
        header[key][rng.choice(["dtype", "shape", "data_offsets"])] = rng.choice(HOSTILE_VALUES)
    elif kind == 1:
        header[key + rng.choice(["\n", " ", "_x", ".", "\x00"])] = header.pop(key)
    elif kind == 2:
        meta = header["__metadata__"]
        meta[rng.choice(sorted(meta) + ["krona.format_version", "krona.scale_baked"])] = rng.choice(
            ["false", "99", "²", "{", "[1]", '{"layers": 3}', "\x1b[31m", ""])
    elif kind == 3:
        header["__metadata__"] = rng.choice(HOSTILE_VALUES)
    elif kind == 4:  # a duplicate key: the second entry points at the same bytes
        text = json.dumps(header)[:-1] + f', "{key}": ' + json.dumps(header[key]) + "}"
        return raw(text, data)
    else:
        header[key]["shape"] = list(reversed(header[key]["shape"])) + rng.choice([[], [1], [3]])
    return raw(json.dumps(header, allow_nan=True), data)


def mutants(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    blob = good_krona(seed)
    return [(_byte_mutation if i % 2 else _header_mutation)(blob, rng) for i in range(count)]


@pytest.mark.slow
def test_every_mutant_loads_or_raises_the_packs_error(tmp_path: Path):
    outcome = {"load: loaded": 0, "load: refused": 0, "convert: loaded": 0, "convert: refused": 0,
               "summary: loaded": 0, "summary: refused": 0}
    accepted_by_convert_only = []
    path = tmp_path / "mutant.krona.safetensors"
    for index, blob in enumerate(mutants(15, MUTANTS)):
        try:
            parse(blob, f"mutant-{index}")
            outcome["load: loaded"] += 1
            loaded = True
        except KronAFileError:
            outcome["load: refused"] += 1
            loaded = False
        path.write_bytes(blob)
        try:
            read_summary(path)
            outcome["summary: loaded"] += 1
        except KronAFileError:
            outcome["summary: refused"] += 1
            assert not loaded, f"mutant {index}: the listing refuses a file load accepts"
        try:
            read_source(path, base="sd1")
            outcome["convert: loaded"] += 1
            if not loaded:
                accepted_by_convert_only.append(index)
        except ConvertError:
            outcome["convert: refused"] += 1
    print(f"\n{MUTANTS} mutants: {outcome}")
    assert outcome["load: loaded"] + outcome["load: refused"] == MUTANTS
    assert outcome["load: refused"] > MUTANTS * 0.8  # the mutations do hit the reader
    assert not accepted_by_convert_only  # one validated reader: convert accepts nothing load refuses

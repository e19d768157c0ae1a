"""Generated malformed files: every one raises KronAFileError (never another exception) and no
model is ever left partially patched."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from conftest import make_unet, randomize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import krona_core
from krona_core.files.model import KronAFileError
from krona_core.files.reader import parse

COUNTS = {"cases": 0}


def raw_file(header: dict, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


@pytest.fixture(scope="module")
def model_and_file(tmp_path_factory):
    unet = make_unet("sd1")
    handle = krona_core.attach(unet, a1=4, a2=2, seed=0)
    randomize(handle)
    path = handle.save(tmp_path_factory.mktemp("fuzz") / "good.krona.safetensors")
    handle.remove()
    with open(path, "rb") as fh:
        return unet, fh.read()


def good_parts(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def entries_of(header: dict, data: bytes) -> dict[str, tuple[str, list[int], bytes]]:
    return {key: (info["dtype"], info["shape"], data[info["data_offsets"][0]:info["data_offsets"][1]])
            for key, info in header.items() if key != "__metadata__"}


def pack(entries: dict[str, tuple[str, list[int], bytes]], metadata: dict | None = None) -> bytes:
    header: dict = {}
    data = b""
    for key, (dtype, shape, payload) in entries.items():
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if metadata is not None:
        header["__metadata__"] = metadata
    return raw_file(header, data)


@st.composite
def malformed(draw, blob: bytes):
    header, data = good_parts(blob)
    kind = draw(st.sampled_from([
        "truncate", "garbage_header", "header_len", "bad_dtype", "bad_shape", "shape_bytes",
        "offsets", "overlap", "w1_dims", "w2_dims", "missing", "unknown_key", "nan", "huge",
        "metadata", "version", "factors_meta", "empty", "pickle", "decomposed", "lora", "alpha",
        "not_object", "trailing", "zero_dim",
    ]))
    if kind == "truncate":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    if kind == "garbage_header":
        n = struct.unpack("<Q", blob[:8])[0]
        junk = draw(st.binary(min_size=n, max_size=n).filter(lambda b: not _is_json_object(b)))
        return blob[:8] + junk + data
    if kind == "header_len":
        n = draw(st.one_of(st.integers(0, 1), st.integers(len(blob), 2**63)))
        return struct.pack("<Q", n) + blob[8:]
    if kind == "pickle":
        return b"\x80\x04" + draw(st.binary(max_size=64))
    if kind == "not_object":
        return raw_file(draw(st.sampled_from([[], "x", 3, None])), b"")  # type: ignore[arg-type]
    if kind == "empty":
        return pack({}, {"krona.format_version": "1"})
    if kind == "trailing":
        return blob + draw(st.binary(min_size=1, max_size=16))
    name = draw(st.sampled_from([k.rsplit(".", 1)[0] for k in header if k != "__metadata__"]))
    entries = entries_of(header, data)
    metadata = header.get("__metadata__", {})
    target = f"{name}.lokr_{draw(st.sampled_from(['w1', 'w2']))}"
    dtype, shape, payload = entries[target]
    if kind == "bad_dtype":
        new = draw(st.sampled_from(["I32", "U8", "BOOL", "I64", "F8_E4M3", "Q4", "f16", ""]))
        size = {"I32": 4, "I64": 8}.get(new, 1)
        entries[target] = (new, shape, bytes(math.prod(shape) * size))
    elif kind == "bad_shape":
        entries[target] = (dtype, draw(st.sampled_from([[-1, 2], [2.5, 2], ["a"], [True, 2], None, {}, [2] * 9])), payload)
    elif kind == "shape_bytes":
        extra = draw(st.integers(1, 8))
        entries[target] = (dtype, [shape[0] + extra, *shape[1:]], payload)
    elif kind == "w1_dims":
        entries[f"{name}.lokr_w1"] = ("F16", [2, 2, 2], bytes(16))
    elif kind == "w2_dims":
        shape = draw(st.sampled_from([[4], [2, 2, 2], [1, 1, 1, 1, 1]]))
        entries[f"{name}.lokr_w2"] = ("F16", shape, bytes(2 * math.prod(shape)))
    elif kind == "missing":
        del entries[target]
    elif kind == "unknown_key":
        entries[draw(st.sampled_from([f"{name}.lokr_w3", "model.diffusion_model.x.weight", f"{name}.weight", "lora_vae_x.lokr_w1", f"{name}.alpha.extra"]))] = ("F16", [1], bytes(2))
    elif kind == "decomposed":
        entries[f"{name}.lokr_w2_a"] = ("F16", [2, 2], bytes(8))
    elif kind == "lora":
        entries[f"{name}.lora_up.weight"] = ("F16", [2, 2], bytes(8))
    elif kind == "alpha":
        entries[f"{name}.alpha"] = ("F16", [2], bytes(4))
    elif kind == "zero_dim":
        entries[target] = (dtype, [0, shape[1]], b"")
    elif kind == "nan":
        bad = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        index = draw(st.integers(0, math.prod(shape) - 1))
        t = torch.frombuffer(bytearray(payload), dtype=torch.float16).clone()
        t[index] = bad
        entries[target] = (dtype, shape, t.numpy().tobytes())
    elif kind == "huge":
        return pack({f"{name}.lokr_w1": ("F16", [2**20, 2**20], b""), f"{name}.lokr_w2": ("F16", [1, 1], bytes(2))})
    elif kind == "metadata":
        metadata = draw(st.sampled_from([[1], "x", {"a": 1}, {"krona.trigger_words": "not json"}, {"krona.trigger_words": "[1, 2]"},
                                         {"krona.training": "{"}, {"krona.scale_baked": "false"}, {"krona.factors": "[]"}]))
    elif kind == "version":
        metadata = {**metadata, "krona.format_version": draw(st.sampled_from(["2", "99", "x", "1.5", ""]))}
    elif kind == "factors_meta":
        factors = json.loads(metadata["krona.factors"])
        layer = draw(st.sampled_from(sorted(factors["layers"])))
        factors["layers"][layer] = [7, 7, 7, 7] if draw(st.booleans()) else factors["layers"][layer]
        if factors["layers"][layer] != [7, 7, 7, 7]:
            factors["layers"]["lora_unet_ghost"] = [1, 1, 1, 1]
        metadata = {**metadata, "krona.factors": json.dumps(factors)}
    if kind in ("offsets", "overlap"):
        blob2 = pack(entries, metadata)
        h, d = good_parts(blob2)
        if kind == "offsets":
            h[target]["data_offsets"] = draw(st.sampled_from([[0, 10**9], [-2, 4], [5, 1], ["0", "4"], [0], [0.0, 4.0]]))
        else:
            h[target]["data_offsets"] = [0, h[target]["data_offsets"][1] - h[target]["data_offsets"][0]]
        return raw_file(h, d)
    return pack(entries, metadata)


def _is_json_object(b: bytes) -> bool:
    try:
        return isinstance(json.loads(b.decode("utf-8")), dict)
    except Exception:
        return False


def test_generated_malformed_files_raise_file_error_and_never_patch(model_and_file, tmp_path_factory):
    unet, blob = model_and_file
    reference = {k: v.clone() for k, v in unet.state_dict().items()}
    folder = tmp_path_factory.mktemp("cases")

    @settings(max_examples=1200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        case = data.draw(malformed(blob))
        COUNTS["cases"] += 1
        with pytest.raises(KronAFileError) as info:
            parse(case, "case.krona.safetensors")
        assert "case.krona.safetensors" in str(info.value)
        path = folder / "case.krona.safetensors"
        path.write_bytes(case)
        with pytest.raises(KronAFileError):
            krona_core.apply(unet, path)
        assert all(not m._forward_hooks for m in unet.modules())

    check()
    assert COUNTS["cases"] >= 1000
    assert all(torch.equal(v, reference[k]) for k, v in unet.state_dict().items())


@settings(max_examples=300, deadline=None, database=None)
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4))
def test_random_byte_flips_give_a_valid_file_or_the_file_error(flips, model_and_file):
    _, blob = model_and_file
    data = bytearray(blob)
    for position, xor in flips:
        data[position % len(data)] ^= xor
    try:
        parse(bytes(data), "flipped")
    except KronAFileError:
        pass


def test_mismatched_module_among_good_ones_leaves_the_model_untouched(model_and_file, tmp_path):
    unet, blob = model_and_file
    header, data = good_parts(blob)
    first = sorted(k for k in header if k.endswith(".lokr_w2"))[-1]
    entries = entries_of(header, data)
    dtype, shape, payload = entries[first]
    entries[first] = (dtype, [shape[1], shape[0]], payload)  # transposed: same bytes, wrong layer shape
    path = tmp_path / "mismatch.krona.safetensors"
    path.write_bytes(pack(entries))
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(KronAFileError, match="give a"):
        krona_core.apply(unet, path, merge=True)
    assert all(not m._forward_hooks for m in unet.modules())
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())

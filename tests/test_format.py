"""The .krona.safetensors file: round trip, metadata, atomic writes, LyCORIS as the independent
loader, and apply() refusing files that do not fit without touching the model."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from conftest import make_text_encoder, make_unet, randomize, unet_inputs
from safetensors.torch import load_file, save_file

import krona_core
from krona_core.files.model import KronAFileError
from krona_core.files.reader import read
from krona_core.files.writer import build_metadata, write
from krona_core.ops.shapes import lycoris_loadable


def trained(base: str = "sd1", seed: int = 0):
    unet = make_unet(base, seed)
    handle = krona_core.attach(unet, a1=4, a2=2, targets="attn", seed=seed)
    randomize(handle, seed=seed)
    return unet, handle


def out(unet, base="sd1"):
    with torch.no_grad():
        return unet(**unet_inputs(base, unet)).sample


def test_round_trip_metadata_and_baked_strength(tmp_path):
    unet, handle = trained()
    handle.set_strength(0.5)
    hooked = out(unet)
    path = handle.save(tmp_path / "me.krona.safetensors", trigger_words=["sks", "sks dog"],
                       training={"steps": 10, "lr": 1e-3}, dtype=torch.float32)
    file = read(path)
    assert file.trigger_words == ["sks", "sks dog"]
    assert file.base_model == "sd1"
    assert file.training == {"lr": 0.001, "steps": 10}
    meta = file.metadata
    for key in ["krona.format_version", "krona.base_model", "krona.factors", "krona.targets", "krona.trigger_words",
                "krona.scale_baked", "krona.training", "ss_network_module", "ss_network_args", "ss_base_model_version",
                "ss_output_name", "sshs_model_hash", "sshs_legacy_hash", "modelspec.architecture", "modelspec.title",
                "modelspec.trigger_phrase", "modelspec.date", "modelspec.sai_model_spec"]:
        assert key in meta, key
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == "lokr"
    assert meta["krona.scale_baked"] == "true" and meta["modelspec.trigger_phrase"] == "sks, sks dog"
    assert json.loads(meta["krona.targets"]) == ["attn"]
    assert json.loads(meta["krona.factors"])["rule"] == {"mode": "factors", "a1": 4, "a2": 2}
    # kohya's model hash: sha256 of everything after the header
    import hashlib

    blob = open(path, "rb").read()
    n = int.from_bytes(blob[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(blob[8 + n:]).hexdigest()
    # tensors: LoKr names, alpha present, strength baked into w1
    raw = load_file(path)
    name = next(iter(handle.factors()))
    path_of = dict(zip(handle.factors(), handle.paths()))[name]
    assert torch.allclose(raw[f"{name}.lokr_w1"], handle.adapter(path_of).w1 * 0.5)
    assert f"{name}.alpha" in raw and raw[f"{name}.alpha"].dim() == 0
    # applying the file at 1.0 to a fresh base reproduces the 0.5-strength output
    fresh = make_unet("sd1")
    krona_core.apply(fresh, file)
    assert torch.allclose(out(fresh), hooked, atol=1e-5)


def test_default_dtype_is_float16_and_bf16_is_refused(tmp_path):
    _, handle = trained()
    path = handle.save(tmp_path / "a.krona.safetensors")
    assert all(t.dtype == torch.float16 for t in load_file(path).values())
    with pytest.raises(KronAFileError, match="float16 or float32"):
        handle.save(tmp_path / "b.krona.safetensors", dtype=torch.bfloat16)
    assert not (tmp_path / "b.krona.safetensors").exists()


def test_write_refuses_nan_overflow_and_bad_names(tmp_path):
    good = {"lora_unet_x": (torch.ones(2, 2), torch.ones(3, 3))}
    meta = build_metadata(good, base_model="sd1", title="t")
    with pytest.raises(KronAFileError, match="NaN"):
        write(tmp_path / "n.krona.safetensors", {"lora_unet_x": (torch.tensor([[float("nan")]]), torch.ones(1, 1))}, meta)
    with pytest.raises(KronAFileError, match="float32"):
        write(tmp_path / "o.krona.safetensors", {"lora_unet_x": (torch.full((1, 1), 1e6), torch.ones(1, 1))}, meta)
    with pytest.raises(KronAFileError, match="kohya module name"):
        write(tmp_path / "k.krona.safetensors", {"unet.x": (torch.ones(1, 1), torch.ones(1, 1))}, meta)
    with pytest.raises(KronAFileError, match="must end with"):
        write(tmp_path / "x.pt", good, meta)
    assert os.listdir(tmp_path) == []


def test_writes_are_atomic_and_never_overwrite(tmp_path, monkeypatch):
    _, handle = trained()
    path = tmp_path / "a.krona.safetensors"
    handle.save(path)
    original = path.read_bytes()
    with pytest.raises(KronAFileError, match="already exists"):
        handle.save(path)
    assert path.read_bytes() == original
    handle.set_strength(2.0)
    handle.save(path, overwrite=True)
    assert path.read_bytes() != original

    # a crash mid-write leaves neither a partial file nor a temp file behind
    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    target = tmp_path / "crash.krona.safetensors"
    with pytest.raises(OSError, match="disk full"):
        handle.save(target)
    assert not target.exists()
    assert sorted(os.listdir(tmp_path)) == ["a.krona.safetensors"]


def test_lycoris_loads_the_file_with_identical_merged_weights(tmp_path, monkeypatch):
    import lycoris.kohya

    # lycoris-lora 4.1 builds a throw-away training network first, and on diffusers UNets its
    # default name targets (time_embedding.linear_1 …) collide with its module targets; loading
    # from weights does not use those defaults, so clear them for the construction
    monkeypatch.setattr(lycoris.kohya.LycorisNetworkKohya, "UNET_TARGET_REPLACE_NAME", [])

    unet = make_unet("sd1")
    handle = krona_core.attach(unet, a1=4, targets="all", lycoris_compatible=True)  # linear, 1×1 and 3×3 convs
    randomize(handle, std=0.02)
    assert all(lycoris_loadable(a.shape) for _, a in handle.items())
    te = make_text_encoder(width=32, projection=True)  # keeps transformers' text_model. root
    te_handle = krona_core.attach(te, a1=4, network="te", lycoris_compatible=True)
    randomize(te_handle, seed=3)
    path = krona_core.save(tmp_path / "l.krona.safetensors", [handle, te_handle], dtype=torch.float32)

    ours_unet, ours_te = make_unet("sd1"), make_text_encoder(width=32, projection=True)
    krona_core.apply(ours_unet, path, merge=True)
    krona_core.apply(ours_te, path, network="te", merge=True)

    ly_unet, ly_te = make_unet("sd1"), make_text_encoder(width=32, projection=True)
    network, weights = lycoris.kohya.create_network_from_weights(1.0, str(path), None, ly_te, ly_unet, for_inference=True)
    assert len(network.unet_loras) == len(handle.paths()) and len(network.text_encoder_loras) == len(te_handle.paths())
    network.merge_to(ly_te, ly_unet, weights, torch.float32, "cpu")

    pristine = {"unet": make_unet("sd1").state_dict(), "te": make_text_encoder(width=32, projection=True).state_dict()}
    for name, ours, theirs in (("unet", ours_unet, ly_unet), ("te", ours_te, ly_te)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6, rtol=1e-5), key
        changed = sum(not torch.equal(a[k], pristine[name][k]) for k in a)
        assert changed == len((handle if name == "unet" else te_handle).paths())


def test_lycoris_loader_limits_are_predicted(tmp_path, monkeypatch):
    """LyCORIS rebuilds shapes from one factor: the paper's (64, 8)-style tall w1 is refused by it
    (hosts apply it fine); our predicate says so before anyone tries."""
    import lycoris.kohya

    monkeypatch.setattr(lycoris.kohya.LycorisNetworkKohya, "UNET_TARGET_REPLACE_NAME", [])
    unet, handle = trained("sd1")  # (4, 2): tall w1, like (64, 8)
    assert not any(lycoris_loadable(a.shape) for _, a in handle.items())
    path = handle.save(tmp_path / "tall.krona.safetensors")
    with pytest.raises(RuntimeError, match="size of tensor"):
        lycoris.kohya.create_network_from_weights(1.0, str(path), None, None, make_unet("sd1"), for_inference=True)


def test_apply_refuses_a_file_for_another_base_without_touching_the_model(tmp_path):
    _, handle = trained("sd1")
    path = handle.save(tmp_path / "sd1.krona.safetensors")
    target = make_unet("sd2")  # same names, different cross-attention width → attn2.to_k shapes differ
    before = {k: v.clone() for k, v in target.state_dict().items()}
    reference = out(target, "sd2")
    with pytest.raises(KronAFileError, match="another base model") as info:
        krona_core.apply(target, path)
    assert "sd1.krona.safetensors" in str(info.value) and "lora_unet_" in str(info.value)
    assert all(not m._forward_hooks for m in target.modules())
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    assert torch.equal(out(target, "sd2"), reference)


def test_apply_reports_unmatched_and_no_match(tmp_path):
    _, handle = trained("sd1")
    path = handle.save(tmp_path / "a.krona.safetensors", dtype=torch.float32)
    tensors = load_file(path)
    from safetensors import safe_open

    with safe_open(path, "pt") as fh:
        meta = fh.metadata()
    meta.pop("krona.factors")
    tensors["lora_unet_not_a_module.lokr_w1"] = torch.ones(2, 2)
    tensors["lora_unet_not_a_module.lokr_w2"] = torch.ones(2, 2)
    partial = tmp_path / "partial.krona.safetensors"
    save_file(tensors, partial, meta)
    with pytest.warns(UserWarning, match="1 of .* unet modules have no match"):
        h = krona_core.apply(make_unet("sd1"), partial)
    assert h.unmatched == ["lora_unet_not_a_module"]
    with pytest.raises(KronAFileError, match="no match"):
        krona_core.apply(make_unet("sd1"), partial, strict=True)
    with pytest.raises(KronAFileError, match="none of its 32 unet modules exist"):
        krona_core.apply(make_text_encoder(), path, network="unet")
    with pytest.raises(KronAFileError, match="another base model"):
        krona_core.apply(make_unet("sdxl"), path)  # the shared mid-block names have SDXL widths
    with pytest.raises(KronAFileError, match="has no te modules"):
        krona_core.apply(make_text_encoder(), path)


def test_sdxl_files_use_ldm_names_and_apply_in_both_styles(tmp_path):
    unet, handle = trained("sdxl")
    hooked = out(unet, "sdxl")
    path = handle.save(tmp_path / "x.krona.safetensors", dtype=torch.float32)
    file = read(path)
    assert all(k.startswith(("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks")) for k in file.modules)
    fresh = make_unet("sdxl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        krona_core.apply(fresh, file)
    assert torch.allclose(out(fresh, "sdxl"), hooked, atol=1e-5)


def test_read_refuses_pickle_and_missing_files(tmp_path):
    pickled = tmp_path / "x.ckpt"
    torch.save({"a": torch.ones(1)}, pickled)
    with pytest.raises(KronAFileError, match="pickle"):
        read(pickled)
    with pytest.raises(KronAFileError, match="cannot open"):
        read(tmp_path / "missing.krona.safetensors")
    with pytest.raises(KronAFileError, match="not a regular file"):
        read(tmp_path)

"""Hostile paths and requests: names from a request, node or widget stay inside their models
folder (after symlinks); listings survive symlink loops and bad files; the A1111 API's requests
are checked against their schemas with bounds. The A1111 side runs here on its pure functions
(their folders pointed at test folders); tests/test_forge.py runs the same requests in Forge."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hostile_corpus import good_krona, kron_bomb, lora_bomb

from krona_core.files.paths import PathRefused, resolve_inside, walk_files


@pytest.fixture()
def models(tmp_path) -> dict[str, Path]:
    krona, lora, outside = tmp_path / "models" / "krona", tmp_path / "models" / "Lora", tmp_path / "secret"
    for folder in (krona, lora, outside):
        folder.mkdir(parents=True)
    (krona / "good.krona.safetensors").write_bytes(good_krona())
    (krona / "sub").mkdir()
    (krona / "sub" / "two.krona.safetensors").write_bytes(good_krona(1))
    (krona / "broken.krona.safetensors").write_bytes(b"\x00" * 20)
    (krona / "bad-json.krona.safetensors").write_bytes(good_krona(**{"krona.trigger_words": "{"}))
    (krona / "dangling.krona.safetensors").symlink_to(tmp_path / "nowhere")
    (krona / "loop1").symlink_to(".")  # the symlink loop: two links to "."
    (krona / "loop2").symlink_to(".")
    (krona / "escape").symlink_to(outside)
    (outside / "stolen.safetensors").write_bytes(good_krona())
    (lora / "inlora.krona.safetensors").write_bytes(good_krona(2))
    (lora / "bomb.safetensors").write_bytes(lora_bomb())
    (krona / "kron-bomb.krona.safetensors").write_bytes(kron_bomb())
    return {"krona": krona, "lora": lora, "outside": outside}


@pytest.mark.parametrize("name", ["/etc/passwd.safetensors", "../secret/stolen.safetensors", "sub/../../x.safetensors",
                                  "escape/stolen.safetensors", "C:/x.safetensors", "good.krona.safetensors\x00.txt",
                                  "notes.txt", "", "  "])
def test_names_that_leave_the_folder_are_refused(models, name):
    with pytest.raises(PathRefused):
        resolve_inside(models["krona"], name)


def test_names_inside_resolve(models):
    assert resolve_inside(models["krona"], "sub/two.krona.safetensors") == str((models["krona"] / "sub" / "two.krona.safetensors").resolve())
    assert resolve_inside(models["krona"], "loop1/loop2/good.krona.safetensors").endswith("krona/good.krona.safetensors")


def test_walk_survives_symlink_loops_and_lists_each_file_once(models):
    names = list(walk_files(models["krona"], (".safetensors",)))
    real = [n for n in names if not n.startswith(("loop1/", "loop2/", "escape/"))]
    assert sorted(real) == ["bad-json.krona.safetensors", "broken.krona.safetensors", "good.krona.safetensors",
                            "kron-bomb.krona.safetensors", "sub/two.krona.safetensors"]
    assert len(names) == len(set(names)) and not any(n.startswith(("loop1/", "loop2/")) for n in names)


@pytest.fixture()
def a1111(models, monkeypatch):
    """krona_a1111's functions with the web UI's folders pointed at the test folders."""
    from krona_a1111 import backend, networks

    monkeypatch.setattr(networks, "krona_dir", lambda: str(models["krona"]))
    monkeypatch.setattr(networks, "lora_dir", lambda: str(models["lora"]))
    monkeypatch.setattr(backend, "krona_dir", lambda: str(models["krona"]))
    monkeypatch.setattr(backend, "lora_dir", lambda: str(models["lora"]))
    return backend


def test_the_a1111_listing_flags_bad_files_and_lists_the_rest(a1111):
    from krona_a1111.api import list_files
    from krona_a1111.networks import resolve

    listed = {item["network"]: item for item in list_files()}
    assert listed["good.krona"]["trigger_words"] == ["sks"] and listed["inlora.krona"]["modules"] == 2
    for bad in ("broken.krona", "bad-json.krona", "kron-bomb.krona"):
        assert "error" in listed[bad], listed[bad]
    assert "dangling.krona" not in listed  # a link to nothing is no file
    assert "stolen" in listed  # a folder the operator symlinked into models/krona is theirs: listed and readable
    assert resolve("good") == "good.krona"  # the <krona:…> prompt lookup, through the loops


@pytest.mark.parametrize("dst", ["/tmp/x.krona.safetensors", "../../x.krona.safetensors", "escape/x.krona.safetensors",
                                 "x.py", "newdir/x.krona.safetensors"])
def test_a1111_convert_writes_only_new_files_inside_models_krona(a1111, models, dst):
    from krona_a1111.requests import ConvertRequest

    with pytest.raises(ValueError):
        a1111.convert(ConvertRequest(src="good.krona.safetensors", dst=dst, to="lora"))
    assert not (models["outside"] / "x.krona.safetensors").exists() and not (models["krona"] / "newdir").exists()


@pytest.mark.parametrize("src", ["/etc/hostname", "../secret/stolen.safetensors", str(Path("/proc/self/environ")),
                                 "missing.safetensors", "bomb.safetensors", "kron-bomb.krona.safetensors",
                                 "sub/../../secret/stolen.safetensors"])
def test_a1111_convert_reads_only_adapters_inside_the_models_folders(a1111, models, src):
    from krona_a1111.requests import ConvertRequest

    with pytest.raises(ValueError) as info:
        a1111.convert(ConvertRequest(src=src, dst="out.krona.safetensors"))
    if "bomb" not in src:  # one answer whether or not such a file exists on the server: nothing revealed
        assert str(info.value) == f"{src!r}: no such .safetensors file in models/krona or the Lora folder (give its name there)"
    assert not (models["krona"] / "out.krona.safetensors").exists()


def test_a1111_convert_works_inside(a1111, models):
    from krona_a1111.requests import ConvertRequest

    report = a1111.convert(ConvertRequest(src="inlora.krona.safetensors", dst="sub/out.safetensors", to="lora"))
    assert "wrote" in report and (models["krona"] / "sub" / "out.safetensors").is_file()
    with pytest.raises(ValueError, match="exists"):
        a1111.convert(ConvertRequest(src="inlora.krona.safetensors", dst="sub/out.safetensors", to="lora"))


BAD_TRAIN = [
    {"images_dir": "x"}, "not an object", [1, 2], {"images_dir": "x", "instance_prompt": "p", "bogus": 1},
    {"images_dir": "x", "instance_prompt": "p", "steps": "500"}, {"images_dir": "x", "instance_prompt": "p", "steps": 10 ** 9},
    {"images_dir": "x", "instance_prompt": "p", "steps": -1}, {"images_dir": "x", "instance_prompt": "p", "steps": 2.5},
    {"images_dir": "x", "instance_prompt": "p", "resolution": 100_000}, {"images_dir": "x", "instance_prompt": "p", "resolution": 8},
    {"images_dir": "x", "instance_prompt": "p", "num_class_images": 10 ** 6},
    {"images_dir": "x", "instance_prompt": "p", "learning_rate": float("nan")},
    {"images_dir": "x", "instance_prompt": "p", "a1": 0}, {"images_dir": "x", "instance_prompt": "p", "schedule": "exp"},
    {"images_dir": "x", "instance_prompt": "p", "train_text_encoder": "yes"}, {"images_dir": 5, "instance_prompt": "p"},
    {"images_dir": "x", "instance_prompt": "p", "grad_accum": True}, {"images_dir": "x", "instance_prompt": "p" * 5000},
]


@pytest.mark.parametrize("payload", BAD_TRAIN, ids=[str(i) for i in range(len(BAD_TRAIN))])
def test_malformed_or_costly_train_requests_are_refused_by_field(payload):
    from krona_a1111.requests import RequestError, TrainRequest, parse_request

    with pytest.raises(RequestError):
        parse_request(TrainRequest, payload)


def test_a_good_train_request_parses():
    from krona_a1111.requests import TrainRequest, parse_request

    request = parse_request(TrainRequest, {"images_dir": "x", "instance_prompt": "p", "steps": 4.0, "learning_rate": 1})
    assert request.steps == 4 and isinstance(request.steps, int) and request.learning_rate == 1.0


@pytest.mark.parametrize("payload", [{"src": "a"}, {"src": "a", "dst": "b", "rank": -1}, {"src": "a", "dst": "b", "to": "exe"},
                                     {"src": "a", "dst": "b", "budget": 10 ** 12}, {"src": 1, "dst": "b"}])
def test_malformed_convert_requests_are_refused(payload):
    from krona_a1111.requests import ConvertRequest, RequestError, parse_request

    with pytest.raises(RequestError):
        parse_request(ConvertRequest, payload)


def test_walk_skips_unreadable_folders(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(b"x")
    (tmp_path / "b.safetensors").write_bytes(b"x")
    os.chmod(folder, 0)
    try:
        names = list(walk_files(tmp_path, (".safetensors",)))
    finally:
        os.chmod(folder, 0o755)
    assert "b.safetensors" in names  # root may still read the locked folder; a user's walk skips it

"""`python -m krona_core eval --adapter FILE`: the world's subject scores of the base and of the base
with the file applied, against the same scores computed here on a UNet whose weights carry the
file's ΔW = kron(w1, w2), formed by hand (an independent path to the command's apply)."""

from __future__ import annotations

import copy
import json

import torch

import krona_core
from krona_core.cli.main import main
from krona_core.eval.world_metrics import subject_scores
from krona_core.ops.matmul import materialise
from krona_core.world import model as world_model


def test_eval_scores_the_base_and_the_adapted_base(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base, _ = world_model.load()
        handle = krona_core.attach(copy.deepcopy(base.unet), a1=8, a2=4, seed=0)
        with torch.no_grad():
            for _, adapter in handle.items():
                adapter.w2.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
        path = handle.save(tmp_path / "random.krona.safetensors", dtype=torch.float32)

        assert main(["eval", "--adapter", str(path), "--samples", "2", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)

        merged = copy.deepcopy(base.unet)
        modules = {"lora_unet_" + path.replace(".", "_"): m for path, m in merged.named_modules()}  # kohya's SD1 names
        for name, (w1, w2) in krona_core.load(path).modules.items():
            weight = modules[name].weight
            weight.data += materialise(w1, w2).reshape(weight.shape).to(weight.dtype)
        expected_base = subject_scores(base.denoiser()).as_dict()
        expected_adapted = subject_scores(base.denoiser(merged)).as_dict()
    finally:
        torch.set_num_threads(threads)
    assert report["subject_base"] == expected_base
    assert report["subject_adapted"].keys() == expected_adapted.keys()
    for key, value in expected_adapted.items():
        assert abs(report["subject_adapted"][key] - value) < 0.05, key  # bypass vs merged: generation noise only
    assert report["subject_adapted"] != report["subject_base"]  # the file changed what the model draws

"""Nothing substituted silently: factors that do not divide a layer are replaced by the nearest
divisor, and the training record says which were used; library calls refuse what the CLI refuses."""

from __future__ import annotations

import pytest

from krona_core.convert.convert import convert_file
from krona_core.convert.errors import ConvertError
from krona_core.tiny.pipeline import build_tiny_pipeline, sample_images
from krona_core.tiny.teacher import tiny_denoiser
from krona_core.train.config import TrainConfig
from krona_core.train.job import JobSpec, run_job

from hostile_corpus import good_krona


def test_factors_that_do_not_divide_are_recorded_as_used():
    denoiser = tiny_denoiser(build_tiny_pipeline(0))
    images = [(img + 1) / 2 for img in sample_images(1, 32, 0)]
    spec = JobSpec(images=images, instance_prompt="a photo of sks toy", resolution=32, bucket_step=16,
                   config=TrainConfig(steps=1, grad_accum=1, a1=7, a2=3))
    job = run_job(denoiser, spec)
    used = job.file.training["factors_used"]
    shapes = {(s.a1, s.a2) for s in job.file.shapes().values()}
    assert {tuple(u) for u in used} == shapes and (7, 3) not in shapes  # what the layers really got
    job.remove_adapters()


@pytest.mark.parametrize("change", [dict(rank=0), dict(rank=-1), dict(a1=0), dict(budget=0), dict(a2=2.5)])
def test_convert_refuses_counts_below_one(tmp_path, change):
    src = tmp_path / "good.krona.safetensors"
    src.write_bytes(good_krona())
    with pytest.raises(ConvertError, match="≥ 1"):
        convert_file(src, tmp_path / "out.safetensors", "lora", **change)


def test_convert_says_which_factors_each_layer_got(tmp_path):
    import torch
    from safetensors.torch import save_file

    from hostile_corpus import Q

    src = tmp_path / "lora.safetensors"
    save_file({f"{Q}.lora_down.weight": torch.randn(4, 320), f"{Q}.lora_up.weight": torch.randn(320, 4),
               f"{Q}.alpha": torch.tensor(4.0)}, src)
    report = convert_file(src, tmp_path / "out.krona.safetensors", a1=7, a2=3, base="sd1")
    assert "factors (a1, a2): (8, 4) ×1 (asked (7, 3)" in report.text

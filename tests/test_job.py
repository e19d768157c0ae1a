"""The one training job every host runs (krona_core.train.job): inputs checked before any model is
touched, the family's defaults, class images from their own seeds, trigger words, files written,
checkpoints reported by step, cancel while class images are drawn."""

from __future__ import annotations

import pytest
import torch

import krona_core
from krona_core import families
from krona_core.tiny.pipeline import build_tiny_pipeline, sample_images
from krona_core.tiny.teacher import tiny_denoiser
from krona_core.train.config import TrainConfig, TrainingInterrupted
from krona_core.train.job import CLASS_SEED_OFFSET, JobError, JobEvents, JobSpec, run_job
from krona_core.train.loop import train
from krona_core.train.sampling import generate_class_examples


def images(n: int = 2, size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    return [(img + 1) / 2 for img in sample_images(n, size, seed)]


def tiny_spec(**kw) -> JobSpec:
    config = TrainConfig(steps=4, grad_accum=1, a1=4, a2=4, lr=3e-3, **kw.pop("config", {}))
    fields = {"images": images(), "instance_prompt": "a photo of sks toy", "resolution": 32, "bucket_step": 16, **kw}
    return JobSpec(config=config, **fields)


class Untouchable:
    """A denoiser that fails the test if the job uses it."""

    family = None

    def __getattr__(self, name):
        raise AssertionError(f"the job touched the model ({name}) before refusing its inputs")


@pytest.mark.parametrize("change,message", [
    (dict(images=[]), "no instance images"),
    (dict(captions=["one"]), "1 captions for 2 images"),
    (dict(class_prompt="a photo of a toy"), "class prompt needs class images"),
    (dict(out="x.safetensors"), "must end with .krona.safetensors"),
    (dict(resume_from="/nonexistent/step_000002.krona.safetensors"), "no such checkpoint"),
    (dict(config=dict(schedule="exp")), "schedule"),
])
def test_bad_inputs_are_refused_before_the_model_is_touched(change, message):
    spec = tiny_spec(**change)
    with pytest.raises(JobError, match=message):
        run_job(Untouchable(), spec)


def test_an_existing_output_is_never_overwritten(tmp_path):
    out = tmp_path / "me.krona.safetensors"
    out.write_bytes(b"mine")
    with pytest.raises(JobError, match="exists"):
        run_job(Untouchable(), tiny_spec(out=str(out)))
    assert out.read_bytes() == b"mine"


def test_the_job_end_to_end(tmp_path):
    pipe = build_tiny_pipeline(0)
    denoiser = tiny_denoiser(pipe)
    out = tmp_path / "me.krona.safetensors"
    seen = {"steps": [], "phases": set()}
    events = JobEvents(on_step=lambda done, total, loss, lr: seen["steps"].append((done, total)),
                       on_progress=lambda phase, done, total: seen["phases"].add(phase))
    spec = tiny_spec(out=str(out), trigger_words="sks toy, studio photo", class_prompt="a photo of a toy", num_class_images=2,
                     captions=[None, "a close-up of sks toy"], record={"host": "test"},
                     config=dict(checkpoint_every=2, checkpoint_dir=str(tmp_path / "ckpt"), validate_every=2,
                                 validation_steps=2))
    job = run_job(denoiser, spec, events)
    assert seen["steps"] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen["phases"] == {"encoding images", "class images", "preview"}
    assert [e.prompt for e in job.examples] == ["a photo of sks toy", "a close-up of sks toy"]
    assert [step for step, _ in job.train.checkpoints] == [2]  # steps recorded, not parsed out of names
    assert job.train.checkpoints[0][1].endswith("step_000002.krona.safetensors")
    file = krona_core.load(out)
    assert file.trigger_words == ["sks toy", "studio photo"]
    assert file.training["host"] == "test" and file.training["class_images"] == 2 and file.training["steps"] == 4
    assert (tmp_path / "me.loss.png").is_file() and job.curve.ndim == 3
    assert sorted(p.name for p in tmp_path.glob("me.preview_*.png")) == ["me.preview_000002.png", "me.preview_000004.png"]
    job.remove_adapters()
    assert not any(m._forward_hooks for m in pipe.unet.modules())


def test_class_images_come_from_their_own_seeds():
    """The job's prior-preservation run equals a direct train() on class images drawn here from
    seed + CLASS_SEED_OFFSET."""
    pipe = build_tiny_pipeline(0)
    denoiser = tiny_denoiser(pipe)
    spec = tiny_spec(class_prompt="a photo of a toy", num_class_images=2, config=dict(seed=7))
    job = run_job(denoiser, spec)
    job.remove_adapters()
    classes = generate_class_examples(denoiser, "a photo of a toy", 2, tuple(job.examples[0].latent.shape), 7 + CLASS_SEED_OFFSET)
    direct = train(denoiser, job.examples, spec.config, class_examples=classes)
    for handle in direct.handles:
        handle.remove()
    assert direct.losses == job.train.losses and job.train.record["class_images"] == 2


def test_cancel_while_class_images_are_drawn_leaves_the_model_clean():
    pipe = build_tiny_pipeline(0)
    denoiser = tiny_denoiser(pipe)
    polls = {"n": 0}

    def stop() -> bool:
        polls["n"] += 1
        return polls["n"] > 1  # after the first class image

    with pytest.raises(TrainingInterrupted):
        run_job(denoiser, tiny_spec(class_prompt="a photo of a toy", num_class_images=5), JobEvents(should_stop=stop))
    assert polls["n"] == 2
    assert not any(m._forward_hooks for m in pipe.unet.modules())


def test_defaults_follow_the_family():
    assert TrainConfig().resolved(families.get("sdxl")).steps == 1000
    assert TrainConfig().resolved(families.get("sd1")).steps == 500
    assert TrainConfig().resolved(None).steps == 500
    assert TrainConfig(steps=12).resolved(families.get("sdxl")).steps == 12

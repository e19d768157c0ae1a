"""Datasets as kohya users keep them (krona_core.train.dataset): repeat folders, caption files,
caption shuffling with keep-tokens and dropout, deterministic by seed; random crops; class images
generated once, saved and reused (krona_core.train.class_images)."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from krona_core import families
from krona_core.tiny.pipeline import build_tiny_pipeline, sample_images
from krona_core.tiny.teacher import tiny_denoiser
from krona_core.train.config import TrainConfig
from krona_core.train.class_images import ClassImageKey, base_fingerprint, cached_class_images
from krona_core.train.data import fit_to_bucket
from krona_core.train.dataset import CaptionPolicy, DatasetError, draw_seed, load_dataset, repeat_folder
from krona_core.train.job import JobSpec, describe_defaults, resolve_defaults, run_job


def _png(path, seed: int, size=(24, 16)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_repeat_folder_names_as_kohya_reads_them():
    assert repeat_folder("10_sks dog") == (10, "sks dog")
    assert repeat_folder("3_sks_dog") == (3, "sks_dog")  # only the first "_" splits
    assert repeat_folder("1_") == (1, "")
    assert repeat_folder("dog") is None and repeat_folder("x_dog") is None and repeat_folder("0_dog") is None


def test_a_kohya_dataset_folder(tmp_path):
    _png(tmp_path / "a.png", 0)
    (tmp_path / "a.txt").write_text("sks dog, on a sofa\n")
    sub = tmp_path / "10_sks dog"
    sub.mkdir()
    _png(sub / "b.jpg", 1)
    _png(sub / "c.png", 2)
    (sub / "c.caption").write_text("sks dog, running")
    _png(sub / "d.png", 3)
    (sub / "d.txt").write_text("txt wins")
    (sub / "d.caption").write_text("caption loses")
    skipped = tmp_path / "notes"
    skipped.mkdir()
    _png(skipped / "e.png", 4)
    items = load_dataset(tmp_path)
    assert [(i.name, i.caption, i.repeats) for i in items] == [
        ("a.png", "sks dog, on a sofa", 1),
        ("10_sks dog/b.jpg", "sks dog", 10),  # no caption file: the folder's class tokens
        ("10_sks dog/c.png", "sks dog, running", 10),
        ("10_sks dog/d.png", "txt wins", 10),
    ]
    expected = np.asarray(Image.open(sub / "b.jpg").convert("RGB"), dtype=np.float32) / 255
    assert torch.equal(items[1].image, torch.from_numpy(expected).permute(2, 0, 1))


def test_a_folder_without_images_is_refused(tmp_path):
    (tmp_path / "dog").mkdir()
    _png(tmp_path / "dog" / "a.png", 0)  # no repeat count: skipped, as kohya does
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        load_dataset(tmp_path / "missing")


def _kohya_process_caption(caption: str, shuffle: bool, keep: int, dropout: float, rng: random.Random) -> str:
    """kohya sd-scripts' process_caption (dropout, keep_tokens, shuffle), written out independently."""
    if dropout > 0 and rng.random() < dropout:
        return ""
    if not shuffle:
        return caption
    tokens = [t.strip() for t in caption.strip().split(",")]
    fixed, flex = tokens[:keep], tokens[keep:]
    rng.shuffle(flex)
    return ", ".join(fixed + flex)


CAPTION = "sks dog, on a sofa, studio light, 35mm, smiling"


@pytest.mark.parametrize("shuffle,keep,dropout", [(True, 1, 0.0), (True, 2, 0.3), (False, 0, 0.5), (True, 0, 0.0)])
def test_caption_policy_is_kohyas_order_and_seeded(shuffle, keep, dropout):
    policy = CaptionPolicy(shuffle, keep, dropout)
    seeds = [draw_seed(0, step, 0, 0, "instance") for step in range(2000)]
    drawn = [policy.apply(CAPTION, s) for s in seeds]
    assert drawn == [_kohya_process_caption(CAPTION, shuffle, keep, dropout, random.Random(s)) for s in seeds]
    assert drawn == [policy.apply(CAPTION, s) for s in seeds]  # the same seeds, the same captions
    kept = [c for c in drawn if c]
    tokens = [t.strip() for t in CAPTION.split(",")]
    for c in kept:
        parts = c.split(", ")
        assert sorted(parts) == sorted(tokens) and parts[:keep] == tokens[:keep]
    if shuffle:
        assert len(set(kept)) == math.factorial(len(tokens) - keep)  # every order of the free tokens turns up
    share = drawn.count("") / len(drawn)
    assert abs(share - dropout) < 0.05


def test_draw_seeds_differ_by_every_coordinate():
    base = draw_seed(0, 5, 1, 2, "instance")
    assert len({base, draw_seed(1, 5, 1, 2, "instance"), draw_seed(0, 6, 1, 2, "instance"), draw_seed(0, 5, 0, 2, "instance"),
                draw_seed(0, 5, 1, 3, "instance"), draw_seed(0, 5, 1, 2, "class")}) == 6


def test_caption_settings_are_checked():
    with pytest.raises(ValueError, match="keep_tokens"):
        TrainConfig(steps=1, keep_tokens=-1).validate()
    with pytest.raises(ValueError, match="caption dropout"):
        TrainConfig(steps=1, caption_dropout=1.5).validate()


def test_random_crop_is_chosen_once_per_image_from_the_seed():
    image = torch.rand(3, 40, 64)
    buckets = [(32, 32)]
    centre, info = fit_to_bucket(image, buckets)
    assert info.crop == (0, 0 + (51 - 32) // 2)  # resized to 32×51, centred horizontally
    cropped, info = fit_to_bucket(image, buckets, crop_seed=123)
    rng = random.Random(123)
    top, left = rng.randint(0, 0), rng.randint(0, 51 - 32)
    assert info.crop == (top, left)
    resized = torch.nn.functional.interpolate(image[None], size=(32, 51), mode="bilinear", antialias=True,
                                              align_corners=False)[0]
    assert torch.equal(cropped, resized[:, :, left:left + 32].clamp(0, 1))


# -- the job: repeats, captions at every draw, class images on disk


def _images(n: int, seed: int = 0) -> list[torch.Tensor]:
    return [(img + 1) / 2 for img in sample_images(n, 32, seed)]


def _spec(**kw) -> JobSpec:
    config = TrainConfig(**{"steps": 3, "grad_accum": 2, "a1": 4, "a2": 4, "lr": 3e-3, **kw.pop("config", {})})
    return JobSpec(config=config, **{"images": _images(2), "instance_prompt": "sks toy, red, small", "resolution": 32,
                                     "bucket_step": 16, **kw})


class Recording:
    """The tiny denoiser, recording every prompt it encodes and every image it decodes."""

    def __init__(self, denoiser):
        self.inner, self.prompts, self.decoded = denoiser, [], 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_prompts(self, prompts, sizes):
        self.prompts += list(prompts)
        return self.inner.encode_prompts(prompts, sizes)

    def decode_latents(self, latents):
        self.decoded += latents.shape[0]
        return self.inner.decode_latents(latents)


def _run(spec: JobSpec, pipe_seed: int = 0):
    denoiser = Recording(tiny_denoiser(build_tiny_pipeline(pipe_seed)))
    job = run_job(denoiser, spec)
    job.remove_adapters()
    return job, denoiser


def test_repeats_train_as_if_the_image_were_listed_that_many_times():
    a, b = _images(2)
    repeated, _ = _run(_spec(images=[a, b], repeats=[2, 1]))
    listed, _ = _run(_spec(images=[a, a, b]))
    assert len(repeated.examples) == 3
    assert repeated.train.losses == listed.train.losses


def test_shuffled_and_dropped_captions_are_seeded():
    config = dict(shuffle_caption=True, keep_tokens=1, caption_dropout=0.3, steps=4)
    prompt = "sks toy, red, small, shiny"
    first, seen = _run(_spec(config=config, instance_prompt=prompt))
    again, seen_again = _run(_spec(config=config, instance_prompt=prompt))
    other, _ = _run(_spec(config={**config, "seed": 1}, instance_prompt=prompt))
    assert first.train.losses == again.train.losses and seen.prompts == seen_again.prompts
    assert first.train.losses != other.train.losses
    policy = CaptionPolicy(True, 1, 0.3)  # every draw's caption, computed here from its coordinates
    expected = [policy.apply("sks toy, red, small, shiny", draw_seed(0, step, round_, 0, "instance"))
                for step in range(4) for round_ in range(2)]
    assert seen.prompts == list(dict.fromkeys(expected))  # encoded once each (frozen text encoder), in draw order
    assert "" in expected and len(set(expected) - {""}) > 1


def test_class_images_are_generated_once_and_reused(tmp_path):
    spec = dict(class_prompt="a photo of a toy", num_class_images=1, class_dir=str(tmp_path), config=dict(steps=1))
    first, made = _run(_spec(**spec))
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and [p.name for p in folders[0].glob("*.png")] == ["0000.png"]
    assert made.decoded == 1
    second, reused = _run(_spec(**spec))
    assert reused.decoded == 0  # nothing generated
    assert second.train.losses == first.train.losses


def test_the_class_image_folder_is_keyed_by_what_decides_the_images(tmp_path):
    denoiser = Recording(tiny_denoiser(build_tiny_pipeline(0)))
    key = ClassImageKey("a photo of a toy", base_fingerprint(denoiser), 4, 32, 32, seed=5, steps=2)
    done = []
    first = cached_class_images(denoiser, tmp_path, key, 2, progress=lambda d, t: done.append((d, t)))
    assert done == [(0, 2), (1, 2), (2, 2)] and denoiser.decoded == 2
    more = cached_class_images(denoiser, tmp_path, key, 3)
    assert more[:2] == first and denoiser.decoded == 3  # only the missing one is generated
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in more[:2]]
    cached_class_images(denoiser, tmp_path, dataclasses.replace(key, prompt="a photo of a plush toy"), 1)
    other_base = base_fingerprint(tiny_denoiser(build_tiny_pipeline(1)))
    assert other_base != key.base
    for changed in (dataclasses.replace(key, prompt="a photo of a plush toy"), dataclasses.replace(key, base=other_base),
                    dataclasses.replace(key, width=48)):
        assert changed.folder_name() != key.folder_name()
    assert len(list(tmp_path.iterdir())) == 2 and denoiser.decoded == 4  # a new prompt: a new folder
    manifest = tmp_path / key.folder_name() / "krona_class_images.json"
    manifest.write_text(manifest.read_text().replace("a photo of a toy", "something else"))
    with pytest.raises(ValueError, match="records other class images"):
        cached_class_images(denoiser, tmp_path, key, 1)


def test_the_family_recipe_fills_what_is_left_unset():
    sdxl = families.get("sdxl")
    spec = JobSpec(images=_images(1), instance_prompt="x")
    config, resolution, crop, defaults = resolve_defaults(spec, sdxl)
    assert (config.steps, resolution, crop) == (1000, 1024, "random")
    assert describe_defaults(defaults) == "defaults from the Stable Diffusion XL recipe: 1000 steps, 1024 px, random crop"
    spec = JobSpec(images=_images(1), instance_prompt="x", config=TrainConfig(steps=7), resolution=768, crop="center")
    config, resolution, crop, defaults = resolve_defaults(spec, sdxl)
    assert (config.steps, resolution, crop, defaults) == (7, 768, "center", {})
    _, resolution, _, defaults = resolve_defaults(JobSpec(images=_images(1), instance_prompt="x"), families.get("sd1"))
    assert resolution == 512 and defaults["steps"] == 500
    _, _, _, defaults = resolve_defaults(JobSpec(images=_images(1), instance_prompt="x"), None)
    assert describe_defaults(defaults).startswith("defaults from the generic")

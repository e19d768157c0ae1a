"""The shipped world base and the demo's recipe, measured: the base follows prompts it never saw
at its stated accuracy, and training on the personalisation task raises subject fidelity over the
base by a stated margin while prompt fidelity stays within a stated margin — for KronA and for
LoRA, through the same harness."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from krona_core.eval.world_metrics import prompt_following, subject_scores
from krona_core.world import model as world_model
from krona_core.world.personalise import RECIPE, task_examples, train_method
from krona_core.world.pretrain import Recipe

STATED_MEAN = 0.85  # mean per-attribute accuracy on held-out captions: measured 0.94 on 120 (README), 0.91 on these 24
SUBJECT_GAIN = 0.2  # subject fidelity after the demo's training minus the base's, at least (measured +0.32 / +0.33)
PROMPT_SLACK = 0.15  # prompt fidelity may drop at most this much (measured 0 / 0.11: one image of LoRA's 6)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run faster on one thread, and much faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(single_thread):
    base, recipe = world_model.load()
    return base, recipe, subject_scores(base.denoiser(), samples_per_prompt=1, prior_samples=6)


def test_the_shipped_base_follows_held_out_prompts(world):
    base, recipe, _ = world
    measured = prompt_following(base.denoiser(), count=24)
    print(f"prompt following on 24 held-out captions: {measured}")
    assert measured["mean"] >= STATED_MEAN
    assert recipe["prompt_following"]["mean"] >= STATED_MEAN  # the figure stored with the weights


def test_the_shipped_vae_keeps_the_emblem(world):
    """The subject must survive encode → decode, or no adapter could draw it (the first emblem, a
    ring round a dot, came back as a blur: 0 of 24)."""
    import numpy as np

    from krona_core.eval.world_metrics import is_emblem, subject_similarity
    from krona_core.world import task

    base, _, _ = world
    refs = task.references(24)
    with torch.no_grad():
        latents = base.vae.encode(torch.from_numpy(refs) * 2 - 1).latent_dist.mean
        kept = ((base.vae.decode(latents).sample + 1) / 2).clamp(0, 1).numpy()
    assert sum(map(is_emblem, kept)) >= 20  # measured 22
    assert subject_similarity(kept, refs) > 0.8 > subject_similarity(np.zeros_like(refs) + 0.5, refs)  # 0.88


def _lora(denoiser, config):
    from bench.sensitivity import PeftLoRA

    return [PeftLoRA(denoiser.unet, 4, config.seed)]


@pytest.mark.parametrize("method", ["krona", "lora_r4"])
def test_the_demo_recipe_personalises_without_losing_the_prompt(world, method):
    import copy

    base, _, before = world
    student = base.denoiser(copy.deepcopy(base.unet))
    train_method(student, RECIPE, None if method == "krona" else _lora, task_examples(student))
    after = subject_scores(student, samples_per_prompt=1, prior_samples=6)
    print(f"{method}: subject {before.subject_fidelity:+.3f} → {after.subject_fidelity:+.3f}, "
          f"prompt {before.prompt_fidelity:.3f} → {after.prompt_fidelity:.3f}")
    assert after.subject_fidelity - before.subject_fidelity >= SUBJECT_GAIN
    assert after.prompt_fidelity >= before.prompt_fidelity - PROMPT_SLACK


def test_the_eval_command_reports_the_bases_prompt_following(single_thread, capsys):
    import json

    from krona_core.cli.main import main

    assert main(["eval", "--samples", "6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["prompt_following"]) == {"shape", "colour", "size", "position", "background", "mean", "all"}
    assert report["pretraining"]["unet_steps_done"] == (Recipe().unet_stop or Recipe().unet_steps)
    assert report["pretraining"] == {**report["pretraining"], **dataclasses.asdict(Recipe())}  # made by the recipe

"""The procedural world: deterministic scenes with captions from their parameters, and analytic
detectors that read every attribute back off clean renders."""

from __future__ import annotations

import numpy as np
import pytest

from krona_core.world import detect, scenes


def test_scenes_are_deterministic_and_captioned_from_parameters():
    a, sa = scenes.sample(8, seed=3)
    b, sb = scenes.sample(8, seed=3)
    c, _ = scenes.sample(8, seed=4)
    assert np.array_equal(a, b) and sa == sb and not np.array_equal(a, c)
    assert a.shape == (8, 3, 32, 32) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    s = scenes.Scene("triangle", "blue", "small", "left", "striped")
    assert s.caption() == "a small blue triangle at the left on a striped background"
    assert set(s.caption().split()) <= set(scenes.VOCAB) and 20 <= len(scenes.VOCAB) <= 60


def test_heldout_combinations_never_appear_in_training_draws():
    _, drawn = scenes.sample(400, seed=0, heldout=False)
    assert not any(scenes.is_heldout(s) for s in drawn)
    _, held = scenes.sample(50, seed=0, heldout=True)
    assert all(scenes.is_heldout(s) for s in held)
    everything = scenes.all_scenes()
    share = sum(map(scenes.is_heldout, everything)) / len(everything)
    assert 0.05 < share < 0.25  # a held-out set of every attribute value, most combinations trained
    for attr in ("shape", "colour", "position", "background"):
        assert {getattr(s, attr) for s in everything if scenes.is_heldout(s)} == {getattr(s, attr) for s in everything}


def test_detectors_read_every_attribute_of_clean_scenes():
    images, drawn = scenes.sample(300, seed=11, heldout=None)
    hits = [detect.attribute_hits(detect.detect(im), s) for im, s in zip(images, drawn)]
    for attr in detect.ATTRIBUTES:
        assert sum(h[attr] for h in hits) == len(hits), attr


@pytest.mark.parametrize("scene", [scenes.Scene(sh, "red", z, "center", "plain") for sh in scenes.SHAPES for z in scenes.SIZES])
def test_each_shape_and_size_by_hand(scene):
    image = scenes.render(scene, np.random.default_rng(0))
    assert detect.detect(image) == detect.Detection(scene.shape, "red", scene.size, "center", "plain")


def test_an_empty_background_has_no_shape():
    grey = scenes.background("gradient", np.random.default_rng(0))
    assert detect.detect(grey) == detect.Detection(None, None, None, None, "gradient")


def test_the_vaes_composites_are_seeded_and_replace_the_stated_share():
    plain, _ = scenes.sample(64, seed=3, heldout=None)
    assert np.array_equal(scenes.vae_sample(64, 3, 0.0), plain)
    mixed = scenes.vae_sample(64, 3, 0.5)
    assert np.array_equal(mixed, scenes.vae_sample(64, 3, 0.5))
    replaced = [not np.array_equal(a, b) for a, b in zip(mixed, plain)]
    assert 20 <= sum(replaced) <= 44 and mixed.shape == plain.shape and 0 <= mixed.min() and mixed.max() <= 1

    def colours(image):
        return {name for name, rgb in scenes.COLOURS.items()
                if (np.abs(image - np.array(rgb)[:, None, None]).max(axis=0) < 0.06).sum() >= 3}

    # composites may hold several colours on the grey: what a world scene never does
    assert max(len(colours(im)) for im, r in zip(mixed, replaced) if r) >= 2
    assert max(len(colours(im)) for im in plain) == 1

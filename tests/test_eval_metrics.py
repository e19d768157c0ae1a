"""The world metrics on images whose answer is known: renders of the emblem and of world scenes."""

from __future__ import annotations

import numpy as np

from krona_core.eval import world_metrics as wm
from krona_core.world import detect, scenes, task


def test_the_emblem_is_told_from_every_world_scene():
    refs = task.references()
    images, _ = task.training_set()
    world, _ = scenes.sample(300, seed=5, heldout=None)
    assert all(wm.is_emblem(im) for im in [*refs, *images])
    assert not any(wm.is_emblem(im) for im in world)


def test_near_misses_of_the_emblem_are_refused():
    rng = np.random.default_rng(4)
    emblem = task.render_emblem(task.Placement("large", "center", "plain"), rng)
    assert wm.is_emblem(emblem)
    flipped = emblem[:, ::-1, :].copy()  # blue above yellow
    sideways = emblem.transpose(0, 2, 1).copy()  # yellow left of blue
    yellow = np.where(wm.detect.foreground(emblem)[None], task.UPPER[:, None, None], emblem)  # one colour
    assert not any(wm.is_emblem(im) for im in (flipped, sideways, yellow))


def test_subject_similarity_ranks_the_subject_above_world_shapes():
    refs = task.references()
    images, _ = task.training_set(seed=3)
    world, drawn = scenes.sample(200, seed=6, heldout=None)
    circles = world[[s.shape == "circle" for s in drawn]]
    emblem = wm.subject_similarity(images, refs)
    assert emblem > 0.85
    assert wm.subject_similarity(circles, refs) < 0.2 and wm.subject_similarity(world, refs) < 0.2
    blank = scenes.background("plain", np.random.default_rng(0))[None]
    assert wm.subject_similarity(blank, refs) == 0.0  # nothing drawn scores zero, not an error


def test_the_emblems_size_position_and_background_are_read_back():
    rng = np.random.default_rng(2)
    for place in task.eval_placements():
        image = task.render_emblem(place, rng)
        assert wm.emblem_size(image) == place.size
        assert wm._position(image) == place.position
        assert detect.detect_background(image) == place.background


def test_placements_the_subject_is_evaluated_on_were_never_trained():
    assert not set(task.TRAIN) & set(task.EVAL)
    assert {p[2] for p in task.EVAL} - {p[2] for p in task.TRAIN} == {"striped"}  # a background it never saw
    assert all(task.TRIGGER in p.prompt() for p in task.eval_placements())
    assert set(task.CLASS_PROMPT.split()) <= set(scenes.VOCAB)

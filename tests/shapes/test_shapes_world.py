"""The procedural shapes world and its tokenizer."""

import numpy as np
import pytest

from genrl.shapes.components import build_tokenizer
from genrl.shapes.world import (
    ATTRIBUTES,
    BACKGROUNDS,
    COLOURS,
    Scene,
    all_scenes,
    held_out_scenes,
    parse_prompt,
    render,
    sample_dataset,
    train_scenes,
)


def test_the_world_has_the_attributes_the_issue_asks_for():
    assert len(ATTRIBUTES["shape"]) >= 4 and len(ATTRIBUTES["colour"]) >= 6 and len(ATTRIBUTES["background"]) >= 4
    assert ATTRIBUTES["count"] == ("a", "two", "three") and len(ATTRIBUTES["size"]) >= 2
    assert Scene("two", "large", "red", "circle", "blue").prompt == "two large red circles on a blue background"
    assert Scene("a", "small", "yellow", "triangle", "white").prompt == "a small yellow triangle on a white background"


def test_every_prompt_parses_back_to_its_scene():
    for scene in all_scenes():
        assert parse_prompt(scene.prompt) == scene
    assert parse_prompt("a cat riding a bike") is None


def test_held_out_combinations_never_appear_in_training():
    train, held = set(train_scenes()), set(held_out_scenes())
    assert train.isdisjoint(held) and train | held == set(all_scenes())
    assert {(s.colour, s.shape) for s in train}.isdisjoint({(s.colour, s.shape) for s in held})
    _, scenes = sample_dataset(500, seed=3)
    _, held = sample_dataset(100, seed=3, split="held_out")
    assert all(s.held_out for s in held)
    assert not any(s.held_out for s in scenes)


def test_rendering_is_deterministic_and_draws_what_the_prompt_says():
    a, scenes = sample_dataset(16, seed=1)
    b, _ = sample_dataset(16, seed=1)
    c, _ = sample_dataset(16, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (16, 64, 64, 3) and a.dtype == np.uint8

    def shape_pixels(scene):
        image = render(scene, np.random.default_rng(0)).astype(int)
        return (np.abs(image - np.array(COLOURS[scene.colour])).sum(-1) < 30).sum(), image

    one, image = shape_pixels(Scene("a", "small", "red", "square", "white"))
    corner = image[0, 0]
    assert np.abs(corner - np.array(BACKGROUNDS["white"])).sum() < 10
    three, _ = shape_pixels(Scene("three", "small", "red", "square", "white"))
    large, _ = shape_pixels(Scene("a", "large", "red", "square", "white"))
    assert 2.2 * one < three and 1.8 * one < large


@pytest.mark.parametrize("prompt", [s.prompt for s in all_scenes()[::37]])
def test_every_world_word_is_one_token(prompt):
    tokenizer = build_tokenizer()
    ids = tokenizer(prompt).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == len(prompt.split()) + 2 and tokenizer.unk_token_id not in ids


def test_tokenizer_pads_to_its_max_length_and_marks_unknown_words():
    tokenizer = build_tokenizer()
    ids = tokenizer(["a red zebra", ""], padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(ids[0]) == tokenizer.model_max_length == 16
    assert tokenizer.unk_token_id in ids[0] and ids[1][2:] == [tokenizer.pad_token_id] * 14


def test_crowded_scenes_always_find_room():
    """Three large shapes can box each other out; the layout starts over instead of looping forever."""
    rng = np.random.default_rng(0)
    for shape in ("circle", "square", "triangle", "diamond"):
        for _ in range(250):
            image = render(Scene("three", "large", "red", shape, "white"), rng)
            assert image.shape == (64, 64, 3)

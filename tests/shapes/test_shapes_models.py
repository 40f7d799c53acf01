"""The shipped shapes models: standard diffusers folders, within budget, and what genrl.train runs by default."""

import dataclasses
import json

import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    LatentConsistencyModelPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from genrl.errors import GenrlError
from genrl.models import resolve_model
from genrl.presets import DEFAULT_PRESET, PRESETS
from genrl.rewards import load_reward
from genrl.shapes import shipped_dir
from genrl.shapes.tiny import FLUX_T5_TOKENS, save_tiny_model, tiny_model_dir
from genrl.shapes.world import COLOURS, sample_dataset, train_scenes
from genrl.train import main


def test_shipped_models_are_small_standard_folders():
    folder = shipped_dir()
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 45e6
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    index = json.loads((folder / "lcm" / "model_index.json").read_text())
    assert index["_class_name"] == "LatentConsistencyModelPipeline" and index["scheduler"][1] == "LCMScheduler"
    assert json.loads((folder / "teacher" / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    index = json.loads((folder / "flow" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline" and index["transformer"][1] == "SD3Transformer2DModel"


def test_plain_diffusers_samples_the_shipped_pipelines():
    prompts = [s.prompt for s in train_scenes()[:2]]
    lcm = LatentConsistencyModelPipeline.from_pretrained(shipped_dir() / "lcm")
    images = lcm(prompts, num_inference_steps=4, guidance_scale=8.0, output_type="np").images
    assert images.shape == (2, 64, 64, 3) and 0 <= images.min() and images.max() <= 1
    teacher = StableDiffusionPipeline.from_pretrained(shipped_dir() / "teacher")
    assert teacher(prompts[:1], num_inference_steps=5, output_type="np").images.shape == (1, 64, 64, 3)
    flow = StableDiffusion3Pipeline.from_pretrained(shipped_dir() / "flow")  # diffusers' defaults: 256 T5 tokens
    images = flow(prompts, num_inference_steps=4, guidance_scale=4.5, output_type="np").images
    assert images.shape == (2, 64, 64, 3) and 0 <= images.min() and images.max() <= 1


def test_shipped_reward_model_reads_fresh_renders():
    images, scenes = sample_dataset(32, seed=12345)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    reward = load_reward("shapes_alignment")
    assert reward.differentiable
    scores = reward(x, [s.prompt for s in scenes], [{}] * 32)
    assert scores.median() > 0.9
    # The same images under prompts with another shape colour score low.
    colours = list(COLOURS)
    wrong = [dataclasses.replace(s, colour=colours[(colours.index(s.colour) + 1) % len(colours)]) for s in scenes]
    assert (reward(x, [w.prompt for w in wrong], [{}] * 32) < 0.5).float().mean() > 0.9


def test_shapes_is_the_default_and_trains(tmp_path):
    default = PRESETS[DEFAULT_PRESET]
    assert (default.model, default.env, default.algo) == ("shapes", "lcm", "ppo")  # RLCM on the shapes LCM
    main(
        [
            "--epochs",
            "2",
            "--batches-per-epoch",
            "1",
            "--eval-every",
            "0",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "r",
        ]
    )
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and abs(metrics[0]["ratio_mean_first_minibatch"] - 1) < 1e-6
    pipe = LatentConsistencyModelPipeline.from_pretrained(shipped_dir() / "lcm")
    pipe.load_lora_weights(tmp_path / "r" / "checkpoints" / "latest")


def test_missing_shapes_models_say_how_to_rebuild(tmp_path, monkeypatch):
    monkeypatch.setattr("genrl.models.shipped_dir", lambda: tmp_path)
    try:
        resolve_model("shapes", "lcm")
    except GenrlError as exc:
        assert "python -m genrl.shapes.pretrain" in str(exc)
    else:
        raise AssertionError("no error")


@pytest.mark.parametrize(
    "name, cls, options",
    [
        ("tiny-sdxl", StableDiffusionXLPipeline, {}),
        ("tiny-flux", FluxPipeline, {"guidance_scale": 3.5, "max_sequence_length": FLUX_T5_TOKENS}),
    ],
)
def test_tiny_sdxl_and_flux_are_plain_diffusers_pipelines(tmp_path, name, cls, options):
    """No genrl family samples them yet: diffusers' own pipeline call is the check, on the folder as saved."""
    folder = tiny_model_dir(name)
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert type(pipe) is cls
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompt="a red circle", num_inference_steps=2, height=64, width=64, output_type="pt", **options)
    assert images.images.shape == (1, 3, 64, 64) and torch.isfinite(images.images).all()
    # Same seed, same weights: a second build saves the same files.
    again = save_tiny_model(tmp_path / name, name)
    weights = sorted(f.relative_to(folder) for f in folder.rglob("*.safetensors"))
    assert weights and weights == sorted(f.relative_to(again) for f in again.rglob("*.safetensors"))
    assert all((folder / f).read_bytes() == (again / f).read_bytes() for f in weights)

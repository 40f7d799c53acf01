"""Quality figures of the shapes models: VAE PSNR, classifier accuracy, prompt accuracy of teacher, LCM and (once it
is trained) the flow model, speed.

Prompt accuracy: the share of generated images in which the classifier finds every prompted attribute.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from genrl.shapes.world import ATTRIBUTES, held_out_scenes, sample_dataset, train_scenes

BARS = {
    "vae_psnr_db": 28.0,
    "classifier_min_accuracy": 0.98,
    "teacher_ddim50_accuracy": 0.85,
    "lcm4_accuracy": 0.75,
    "lcm2_accuracy": 0.65,
    "lcm4_heldout_accuracy": 0.60,
    "flow40_accuracy": 0.90,
    "flow10_accuracy": 0.85,
    "flow40_heldout_accuracy": 0.70,
}
TEACHER_GUIDANCE = 5.0
LCM_GUIDANCE = 8.0
FLOW_GUIDANCE = 4.5  # Flow-GRPO's, for SD3.5


def load_models(folder: Path):
    from diffusers import DDIMScheduler, LatentConsistencyModelPipeline, StableDiffusionPipeline

    from genrl.shapes.components import ShapesClassifier

    teacher = StableDiffusionPipeline.from_pretrained(folder / "teacher")
    teacher.scheduler = DDIMScheduler.from_config(teacher.scheduler.config)
    lcm = LatentConsistencyModelPipeline.from_pretrained(folder / "lcm")
    classifier = ShapesClassifier.from_pretrained(folder / "reward").eval()
    for pipe in (teacher, lcm):
        pipe.set_progress_bar_config(disable=True)
    return teacher, lcm, classifier


def load_flow(folder: Path):
    """The shapes flow model (a StableDiffusion3Pipeline), or None where it has not been trained."""
    from diffusers import StableDiffusion3Pipeline

    if not (Path(folder) / "flow" / "model_index.json").exists():
        return None
    flow = StableDiffusion3Pipeline.from_pretrained(Path(folder) / "flow")
    flow.set_progress_bar_config(disable=True)
    return flow


def _flow_options(steps: int) -> dict:
    from genrl.shapes.components import FLOW_ZERO_TOKENS

    # One zero T5 token, as genrl samples it (the model reads diffusers' default 256 the same way, at 4x the cost).
    return dict(num_inference_steps=steps, guidance_scale=FLOW_GUIDANCE, max_sequence_length=min(FLOW_ZERO_TOKENS))


def prompt_accuracy(images: torch.Tensor, scenes: list, classifier) -> float:
    with torch.no_grad():
        logits = classifier(images)
    correct = torch.ones(len(scenes), dtype=torch.bool)
    for name in ATTRIBUTES:
        labels = torch.tensor([s.label()[name] for s in scenes])
        correct &= logits[name].argmax(1) == labels
    return correct.float().mean().item()


def _generate(pipe, scenes: list, batch: int = 32, **kwargs) -> torch.Tensor:
    out = []
    for start in range(0, len(scenes), batch):
        prompts = [s.prompt for s in scenes[start : start + batch]]
        gen = torch.Generator().manual_seed(start)
        out.append(pipe(prompts, output_type="pt", generator=gen, **kwargs).images)
    return torch.cat(out)


def _scenes(num: int, seed: int, held_out: bool) -> list:
    rng = np.random.default_rng(seed)
    pool = held_out_scenes() if held_out else train_scenes()
    return [pool[i] for i in rng.integers(len(pool), size=num)]


def sample_grid(folder: Path, path: Path, seed: int = 0) -> Path:
    """Rows: the teacher with 50 DDIM steps, the LCM with 1, 2, 4 and 8 steps, and the flow model (if trained) with
    10 and 40; columns: 8 prompts."""
    from genrl.rundir import image_grid

    teacher, lcm, _ = load_models(Path(folder))
    flow = load_flow(Path(folder))
    scenes = _scenes(8, seed + 2, False)
    rows = [_generate(teacher, scenes, num_inference_steps=50, guidance_scale=TEACHER_GUIDANCE)]
    rows += [_generate(lcm, scenes, num_inference_steps=h, guidance_scale=LCM_GUIDANCE) for h in (1, 2, 4, 8)]
    labels = ["teacher 50"] + [f"LCM {h}" for h in (1, 2, 4, 8)]
    if flow is not None:
        rows += [_generate(flow, scenes, **_flow_options(h)) for h in (10, 40)]
        labels += ["flow 10", "flow 40"]
    captions = [f"{label}: {s.prompt}" if i == 0 else "" for label in labels for i, s in enumerate(scenes)]
    image_grid(torch.cat(rows), captions, columns=8).save(path)
    (Path(path).with_suffix(".txt")).write_text(
        "rows: " + ", ".join(labels) + "\ncolumns:\n" + "\n".join(s.prompt for s in scenes) + "\n"
    )
    return Path(path)


def evaluate(folder: Path, num_images: int = 256, seed: int = 0) -> dict:
    teacher, lcm, classifier = load_models(Path(folder))
    figures: dict[str, float] = {}

    images, scenes = sample_dataset(num_images, seed=90_000_001 + seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        vae = lcm.vae
        recon = (vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    mse = ((recon - x) ** 2).mean(dim=(1, 2, 3))
    figures["vae_psnr_db"] = float((10 * torch.log10(1 / mse)).mean())

    for split, suffix in (("train", ""), ("held_out", "_heldout")):
        images, scenes = sample_dataset(4 * num_images, seed=91_000_001 + seed, split=split)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            logits = classifier(x)
        for name in ATTRIBUTES:
            labels = torch.tensor([s.label()[name] for s in scenes])
            accuracy = (logits[name].argmax(1) == labels).float().mean().item()
            figures[f"classifier_{name}_accuracy{suffix}"] = accuracy
        figures[f"classifier_min_accuracy{suffix}"] = min(
            figures[f"classifier_{n}_accuracy{suffix}"] for n in ATTRIBUTES
        )

    train, held = _scenes(num_images, seed, False), _scenes(num_images, seed + 1, True)
    teacher_images = _generate(teacher, train, num_inference_steps=50, guidance_scale=TEACHER_GUIDANCE)
    figures["teacher_ddim50_accuracy"] = prompt_accuracy(teacher_images, train, classifier)
    for steps in (1, 2, 4, 8):
        images = _generate(lcm, train, num_inference_steps=steps, guidance_scale=LCM_GUIDANCE)
        figures[f"lcm{steps}_accuracy"] = prompt_accuracy(images, train, classifier)
    figures["lcm4_heldout_accuracy"] = prompt_accuracy(
        _generate(lcm, held, num_inference_steps=4, guidance_scale=LCM_GUIDANCE), held, classifier
    )
    figures["teacher_ddim50_heldout_accuracy"] = prompt_accuracy(
        _generate(teacher, held, num_inference_steps=50, guidance_scale=TEACHER_GUIDANCE), held, classifier
    )

    flow = load_flow(Path(folder))
    if flow is not None:
        for steps in (10, 40):
            images = _generate(flow, train, **_flow_options(steps))
            figures[f"flow{steps}_accuracy"] = prompt_accuracy(images, train, classifier)
            images = _generate(flow, held, **_flow_options(steps))
            figures[f"flow{steps}_heldout_accuracy"] = prompt_accuracy(images, held, classifier)

    prompts = [s.prompt for s in train[:8]]
    lcm(prompts, num_inference_steps=4, guidance_scale=LCM_GUIDANCE, output_type="pt")  # warm-up
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        lcm(prompts, num_inference_steps=4, guidance_scale=LCM_GUIDANCE, output_type="pt")
        timings.append(time.perf_counter() - start)
    figures["lcm4_batch8_seconds"] = float(np.median(timings))

    print(f"shapes models in {folder} ({num_images} images per prompt-accuracy figure):")
    for key, value in figures.items():
        bar = BARS.get(key)
        verdict = "" if bar is None else ("  ok" if value >= bar else f"  BELOW the bar of {bar}")
        if key == "lcm4_batch8_seconds":
            verdict = "  ok" if value <= 0.25 else "  ABOVE the bar of 0.25 s"
        print(f"  {key:34s} {value:8.4f}{verdict}")
    return figures

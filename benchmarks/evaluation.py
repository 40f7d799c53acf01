"""The final models, loaded the way a user loads them and sampled at several step counts (Figs. 6-8, samples)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.methods import METHODS
from benchmarks.runs import run_directory
from genrl.assemble import assemble
from genrl.config import TrainConfig, replace_config
from genrl.envs import make_env
from genrl.families import env_options, family
from genrl.prompts import load_prompts
from genrl.rollout import SamplingBatch, collect
from genrl.rundir import atomic_write_text, image_grid


@dataclass(frozen=True)
class EvaluationSettings:
    device: str
    images: int
    """Images per point: inference budget, step count, held-out prompts."""
    quick: bool
    """The training horizons only (and DDIM's 50), no variants, no held-out prompts or base models."""


def untrained(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` for its model as it ships: no adapter (a fresh one is a no-op, but not the same weights), so no KL to
    the model without it either (nothing is trained)."""
    changes: dict = {"finetune": "full"}
    if getattr(cfg.algo_config, "kl_coef", 0.0) > 0:
        changes["kl_coef"] = 0.0
    return replace_config(cfg, **changes)


class Evaluator:
    def __init__(self, cfg: TrainConfig, lora: Path | None, device: str, num_images: int):
        self.cfg, self.num_images = cfg, num_images
        parts = assemble(cfg if lora is not None else untrained(cfg), device, trained_lora=lora)
        self.pipe, self.reward, self.policy = parts.pipeline, parts.reward, parts.policy

    def sample(self, num_steps: int, prompts: list[str], seed: int = 12345, draw: bool = True):
        """Mean reward, seconds per image (sampling and decode) and the images, on ``num_images`` prompts drawn
        from the list (``draw``) or on the list itself, in its order."""
        rng = np.random.default_rng(seed)
        chosen = [prompts[i] for i in rng.integers(len(prompts), size=self.num_images)] if draw else prompts
        batch = min(8, len(chosen))
        options = env_options(self.cfg)
        env = make_env(self.cfg.env, batch, self.pipe, self.reward, num_steps, self.cfg.resolution, **options)
        collect(env, self.policy, SamplingBatch(chosen[:batch], seed, seed))  # warm-up
        rewards, seconds, images = [], 0.0, []
        for start in range(0, len(chosen) - batch + 1, batch):
            rollout = collect(
                env, self.policy, SamplingBatch(chosen[start : start + batch], seed + start, seed - start)
            )
            rewards.append(rollout.rewards)
            seconds += rollout.sample_time_s
            images.append(rollout.images)
        count = sum(len(r) for r in rewards)
        return torch.cat(rewards).mean().item(), seconds / count, torch.cat(images)


def evaluation_steps(cfg: TrainConfig, quick: bool = False) -> list[int]:
    """Inference steps swept for the budget figure, as the run's family chooses them."""
    return family(cfg.env).evaluation_steps(cfg.num_steps, quick)


def evaluate_method(cfg: TrainConfig, lora: Path | None, settings: EvaluationSettings, cache: Path) -> dict:
    """The model at several step counts, on held-out prompts, and 8 sample images; kept in ``cache`` once done."""
    if cache.with_suffix(".json").is_file():
        result = json.loads(cache.with_suffix(".json").read_text())
        result["_images"] = torch.load(cache.with_suffix(".pt"))
        return result
    evaluator = Evaluator(cfg, lora, settings.device, settings.images)
    trained = load_prompts(cfg.prompts)
    sweep = {}
    for steps in evaluation_steps(cfg, settings.quick):
        reward, seconds, _ = evaluator.sample(steps, trained)
        sweep[str(steps)] = {"reward": reward, "seconds_per_image": seconds}
    result: dict = {"steps": sweep}
    if cfg.prompts == "shapes_train" and not settings.quick:
        result["heldout_reward"] = evaluator.sample(cfg.num_steps, load_prompts("shapes_heldout"))[0]
        result["trained_reward"] = sweep[str(cfg.num_steps)]["reward"]
    grid_prompts = trained[:: max(1, len(trained) // 8)][:8]
    result["_prompts"] = grid_prompts
    images = evaluator.sample(cfg.num_steps, grid_prompts, seed=7, draw=False)[2]
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(images, cache.with_suffix(".pt"))
    atomic_write_text(cache.with_suffix(".json"), json.dumps(result))
    return {**result, "_images": images}


def evaluate_task(
    task: str, data: dict, methods: dict[str, TrainConfig], seed: int, settings: EvaluationSettings, out: Path
) -> None:
    """Into ``data["evaluation"]`` and ``out/samples_<task>.png``: each method's final LoRA of run ``seed`` and the
    base models of the methods ``shown``; the grid shows, per method, the base model, the best checkpoint that kept the
    picture (``--keep-best``) and the final one, each row labelled with what it shows."""
    rows, captions = [], []
    for name, cfg in methods.items():
        method = METHODS[name]
        if settings.quick and not method.shown:
            continue
        checkpoints = run_directory(out, task, method.slug, seed) / "checkpoints"
        final = checkpoints / "latest" if (checkpoints / "latest").exists() else None  # None: a reference, untrained
        cache = out / "evaluations" / f"{task}-{method.slug}"
        evaluation = evaluate_method(cfg, final, settings, cache)
        data["evaluation"][name] = {k: v for k, v in evaluation.items() if not k.startswith("_")}
        if not method.shown:
            continue
        prompts = evaluation["_prompts"]
        if final is None:
            rows.append(evaluation["_images"])
            captions += [f"{name} untrained (the reference): {p}" for p in prompts]
            continue
        if not settings.quick:
            base = evaluate_method(cfg, None, settings, cache.with_name(f"{cache.name}-base"))
            rows.append(base.pop("_images"))
            captions += [f"{name} untrained: {p}" for p in base.pop("_prompts")]
            data["evaluation"][name]["base"] = {k: v for k, v in base.items() if not k.startswith("_")}
        best = (checkpoints / "best").resolve()
        if best.is_dir() and best != final.resolve():
            rows.append(Evaluator(cfg, best, settings.device, len(prompts)).sample(cfg.num_steps, prompts, 7, False)[2])
            captions += [f"{name} best kept ({best.name}): {p}" for p in prompts]
        rows.append(evaluation["_images"])
        captions += [f"{name} final ({final.resolve().name}): {p}" for p in prompts]
    image_grid(torch.cat(rows), captions, columns=8).save(out / f"samples_{task}.png")

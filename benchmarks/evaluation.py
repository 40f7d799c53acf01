"""The final models, loaded the way a user loads them and sampled at several step counts (Figs. 6-8, samples)."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.methods import DDPO_PPO, METHODS, RLCM_PPO
from benchmarks.runs import run_directory
from genrl.assemble import assemble
from genrl.config import TrainConfig, replace_config
from genrl.config_sampler import sampler_name, sampler_options
from genrl.cpu import OtherLoad
from genrl.envs import DenoisingEnv, make_env
from genrl.prompts import load_prompts
from genrl.rollout import SamplingBatch, collect
from genrl.rundir import atomic_write_text, image_grid
from genrl.samplers import sampler_class


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

    def env(self, batch: int, num_steps: int) -> DenoisingEnv:
        """The model's env for ``batch`` images of ``num_steps`` steps, scoring with the method's reward."""
        options = sampler_options(self.cfg)
        return make_env(self.cfg.env, batch, self.pipe, self.reward, num_steps, self.cfg.resolution, **options)

    def sample(self, num_steps: int, prompts: list[str], seed: int = 12345, draw: bool = True):
        """Mean reward, seconds per image (sampling and decode) and the images, on ``num_images`` prompts drawn
        from the list (``draw``) or on the list itself, in its order."""
        rng = np.random.default_rng(seed)
        chosen = [prompts[i] for i in rng.integers(len(prompts), size=self.num_images)] if draw else prompts
        batch = min(8, len(chosen))
        env = self.env(batch, num_steps)
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


TIMING_ROUNDS = 7
UNDER_LOAD_CORES = 0.5
"""Other processes' average busy cores over a timing above which its figures are flagged as measured under load."""


def time_inference(pair: dict[str, tuple[TrainConfig, Path | None]], settings: EvaluationSettings) -> dict:
    """Seconds per image of each method of ``pair`` (name: its config and final LoRA) at its training horizon, in
    interleaved rounds, one batch of each a round after a warm-up batch, so that a slow spell of the machine falls on
    both: per method the median round's wall-clock and CPU time; the ratio of the first method's to the second's
    per round (median, least, most); the cores other processes kept busy meanwhile, and ``under_load`` above
    ``UNDER_LOAD_CORES``. A single timing taken beside other work was off by 20-60x before."""
    evaluators = {name: Evaluator(cfg, lora, settings.device, 8) for name, (cfg, lora) in pair.items()}
    prompts = load_prompts(next(iter(pair.values()))[0].prompts)[:8]
    envs = {name: evaluator.env(len(prompts), evaluator.cfg.num_steps) for name, evaluator in evaluators.items()}
    for name, evaluator in evaluators.items():
        collect(envs[name], evaluator.policy, SamplingBatch(prompts, 0, 0))  # warm-up
    walls: dict[str, list[float]] = {name: [] for name in pair}
    cpus: dict[str, list[float]] = {name: [] for name in pair}
    load = OtherLoad()
    for round_ in range(TIMING_ROUNDS):
        for name, evaluator in evaluators.items():
            cpu = time.process_time()
            rollout = collect(envs[name], evaluator.policy, SamplingBatch(prompts, round_ + 1, round_ + 1))
            walls[name].append(rollout.sample_time_s / len(prompts))  # sampling and decode, as in the step sweep
            cpus[name].append((time.process_time() - cpu) / len(prompts))  # the reward's too
    other = load.read()
    first, second = pair
    ratios = [a / b for a, b in zip(walls[first], walls[second])]
    return {
        "methods": [first, second],
        "rounds": TIMING_ROUNDS,
        "seconds_per_image": {name: statistics.median(walls[name]) for name in pair},
        "cpu_seconds_per_image": {name: statistics.median(cpus[name]) for name in pair},
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "other_load_cores": other,
        "under_load": other > UNDER_LOAD_CORES,
    }


def evaluation_steps(cfg: TrainConfig, quick: bool = False) -> list[int]:
    """Inference steps swept for the budget figure, as the run's sampler chooses them."""
    return sampler_class(sampler_name(cfg)).evaluation_steps(cfg.num_steps, quick)


def evaluate_method(cfg: TrainConfig, lora: Path | None, settings: EvaluationSettings, cache: Path) -> dict:
    """The model at several step counts and on held-out prompts; kept in ``cache`` (a .json) once done."""
    if cache.with_suffix(".json").is_file():
        return json.loads(cache.with_suffix(".json").read_text())
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
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache.with_suffix(".json"), json.dumps(result))
    return result


def composite_prompts(cfg: TrainConfig) -> list[str]:
    """The 8 training prompts, evenly spaced through the list, that the sample composites show."""
    trained = load_prompts(cfg.prompts)
    return trained[:: max(1, len(trained) // 8)][:8]


def sample_composite(
    methods: dict[str, TrainConfig], checkpoints: dict[str, Path | None], device: str, path: Path, base: bool = True
) -> None:
    """``path``: per method, rows of its samples on the same prompts and noise: its untrained model (unless not
    ``base``), its checkpoint where it first met the target (``checkpoints/target``; where no such link was kept, the
    best that kept the picture, ``best``) unless that is the final one, and its final one. A method whose
    ``checkpoints`` is None is a reference: one untrained row."""
    rows, captions = [], []
    for name, cfg in methods.items():
        prompts = composite_prompts(cfg)
        folder = checkpoints[name]
        if folder is None:
            shown: list[tuple[str, Path | None]] = [("untrained (the reference)", None)]
        else:
            final = (folder / "latest").resolve()
            shown = [("untrained", None)] if base else []
            for link, label in (("target", "at target"), ("best", "best kept")):
                if (folder / link).is_dir():
                    middle = (folder / link).resolve()
                    if middle != final:
                        shown.append((f"{label} ({middle.name})", middle))
                    break
            shown.append((f"final ({final.name})", final))
        for what, lora in shown:
            evaluator = Evaluator(cfg, lora, device, len(prompts))
            rows.append(evaluator.sample(cfg.num_steps, prompts, seed=7, draw=False)[2])
            captions += [f"{name} {what}: {p}" for p in prompts]
    image_grid(torch.cat(rows), captions, columns=8).save(path)


def evaluate_task(
    task: str, data: dict, methods: dict[str, TrainConfig], seed: int, settings: EvaluationSettings, out: Path
) -> None:
    """Into ``data["evaluation"]`` each method's final LoRA of run ``seed`` and the base models of the methods
    ``shown`` (not in a quick run); into ``out/samples_<task>.png`` the sample composite of those runs."""
    finals, composite = {}, {}
    for name, cfg in methods.items():
        method = METHODS[name]
        checkpoints = run_directory(out, task, method.slug, seed) / "checkpoints"
        final = checkpoints / "latest" if (checkpoints / "latest").exists() else None  # None: a reference, untrained
        composite[name] = checkpoints if final is not None else None
        if settings.quick and not method.shown:
            continue
        cache = out / "evaluations" / f"{task}-{method.slug}"
        finals[name] = (cfg, final)
        data["evaluation"][name] = evaluate_method(cfg, final, settings, cache)
        if method.shown and final is not None and not settings.quick:
            base = cache.with_name(f"{cache.name}-base")
            data["evaluation"][name]["base"] = evaluate_method(cfg, None, settings, base)
    sample_composite(methods, composite, settings.device, out / f"samples_{task}.png", base=not settings.quick)
    if DDPO_PPO.name in finals and RLCM_PPO.name in finals:  # DDPO's time over RLCM's: the inference speed-up
        data["inference_timing"] = time_inference({m.name: finals[m.name] for m in (DDPO_PPO, RLCM_PPO)}, settings)

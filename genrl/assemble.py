"""The one way a configuration becomes a model, an env, a policy and an algorithm: ``genrl.train`` and every
benchmark build through ``assemble``, so what they measure is what a user trains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrl.algos.registry import make_algorithm
from genrl.config import DEFAULT_LORA_TARGETS, TrainConfig
from genrl.config_sampler import sampler_name, sampler_options
from genrl.denoiser import denoiser
from genrl.envs import DenoisingEnv, make_env
from genrl.errors import GenrlError
from genrl.models import load_pipeline
from genrl.policy import DenoisingPolicy, add_lora, make_policy
from genrl.precision import cast_frozen, half_dtype
from genrl.rewards import load_reward
from genrl.rewards.base import CheckedReward


def derived_seed(*keys: int) -> int:
    """An independent 63-bit seed per (run seed, epoch, batch, purpose): a run is a pure function of its seed."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass
class Assembly:
    pipeline: Any
    env: DenoisingEnv
    policy: DenoisingPolicy
    reward: CheckedReward
    algorithm: Any
    """Built from the configuration's algorithm and settings, validated against the run and prepared."""


def assemble(
    cfg: TrainConfig,
    device: str | None = None,
    *,
    trained_lora: Path | None = None,
    num_envs: int | None = None,
    num_steps: int | None = None,
    score_in_env: bool = True,
) -> Assembly:
    """What ``cfg`` trains: its reward, algorithm, pipeline on ``device`` (default ``cfg.device``), env and policy,
    with a fresh LoRA (seeded from ``cfg.seed``) or every denoiser weight trainable, as ``cfg.finetune`` says.

    ``trained_lora``: load a saved LoRA folder instead (frozen; for evaluation). ``num_envs`` and ``num_steps``
    override the configuration's batch and horizon (evaluation at other step counts). ``score_in_env=False``: the
    env leaves scoring to the caller (``--async-rewards``)."""
    reward = load_reward(cfg.reward)
    algorithm = make_algorithm(cfg.algo, cfg.algo_config)
    if hasattr(algorithm, "validate"):
        algorithm.validate(cfg)  # also resolves what depends on the run (DPG: how many steps keep a graph)
    pipeline = load_pipeline(cfg.model, cfg.env, device or cfg.device, sampler=sampler_name(cfg))
    try:  # the env checks the pipeline and the image size against each other
        env = make_env(
            cfg.env,
            num_envs or cfg.sample_batch_size,
            pipeline,
            reward if score_in_env else None,
            num_steps or cfg.num_steps,
            cfg.resolution,
            **sampler_options(cfg),
        )
    except ValueError as exc:
        raise GenrlError(f"--model {cfg.model}: {exc}") from None
    if trained_lora is not None:
        pipeline.load_lora_weights(trained_lora)
    elif cfg.finetune == "lora":
        torch.manual_seed(derived_seed(cfg.seed, 0, 0, 4))  # the LoRA's random initial A comes from torch's RNG
        try:
            add_lora(denoiser(pipeline), cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules)
        except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
            reason = str(exc).splitlines()[0][:200].rstrip(".")
            raise GenrlError(
                f"--lora-target-modules {' '.join(cfg.lora_target_modules)}: {reason}; name layers of the denoiser, "
                f"e.g. the default {' '.join(DEFAULT_LORA_TARGETS)}"
            ) from None
    else:
        denoiser(pipeline).requires_grad_(True)
    if hasattr(algorithm, "prepare"):
        algorithm.prepare(pipeline, reward)
    half = half_dtype(cfg.mixed_precision)
    cast_frozen(pipeline, half)  # once the trainable weights are known: they stay fp32
    policy = make_policy(env, cfg.guidance_scale, cfg.logprob_reduction).eval()
    policy.autocast_dtype = half
    if cfg.compile:
        denoiser(pipeline).compile()  # in place, so state_dict keys, LoRA exports and checkpoints stay as they are
    return Assembly(pipeline, env, policy, reward, algorithm)

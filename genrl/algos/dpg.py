"""Deterministic policy gradient by reward backpropagation (AlignProp; DRaFT-K) through the sampling chain.

The sampler is reparameterised: the initial latent x_T and every step's noise z_t come from seeds, so

    x_t' = mean_theta(x_t, t) + std_t * z_t                   (each step of the LCM or DDIM env)
    loss = -mean_b r(decode(x_0^b)) + kl_coef * mean_t KL(pi_theta || pi_ref)(x_t)

is a differentiable function of the weights theta. Only the last K steps (``--dpg-truncation``) keep a graph:
the earlier ones run without one, so memory grows with K, not with the horizon (DRaFT-K). With the same seeds
and weights, the chain is exactly the one ``rollout.collect`` samples for PPO.

There is no buffer and no advantage: each sampling batch is backpropagated as soon as it is scored, and an
optimizer step follows every ``gradient_accumulation_steps`` batches (the last step of an epoch takes the ones
left over), its gradient the mean over their images.
"""

from __future__ import annotations

import time

import torch

from genrl.algos.common import EpochMeans, GradientSync, optimizer_step
from genrl.distributed import NoiseSlice
from genrl.envs import DenoisingEnv
from genrl.policy import DenoisingPolicy
from genrl.rollout import Rollout, SamplingBatch


def reparameterised_rollout(
    env: DenoisingEnv,
    policy: DenoisingPolicy,
    prompts: list[str],
    noise_seed: int,
    step_seed: int,
    truncation: int,
    kl_coef: float = 0.0,
    noise_slice: NoiseSlice | None = None,
) -> tuple[Rollout, torch.Tensor, torch.Tensor]:
    """One batch through the env with a graph over its last ``truncation`` steps.

    Returns the rollout (detached, for logging), the rewards (B,) with their graph, and the mean per-step KL to
    the reference over the steps with a graph (0 unless ``kl_coef`` > 0).
    """
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(step_seed)
    obs, _ = env.reset(seed=noise_seed, options={"prompts": prompts, "noise_slice": noise_slice})
    embeds, negative = obs["prompt_embeds"], obs["negative_prompt_embeds"]
    kls = []
    for i in range(env.num_steps):
        with torch.set_grad_enabled(i >= env.num_steps - truncation):
            action, dist = policy.sample_action(obs, generator, noise_slice)
            if kl_coef > 0 and torch.is_grad_enabled() and obs["stochastic"].all():
                kls.append(policy.kl_to_reference(obs, dist).mean())
            obs, rewards, _, _, info = env.step(action)
    reward_time = info["reward_time_s"]
    rollout = Rollout(
        prompts,
        [{} for _ in prompts],
        embeds,
        negative,
        steps=[],
        rewards=rewards.detach(),
        images=info["images"].detach(),
        reward_parts={k: v.detach() for k, v in info["reward_parts"].items()},
        sample_time_s=time.perf_counter() - start - reward_time,
        reward_time_s=reward_time,
    )
    kl = torch.stack(kls).mean() if kls else torch.zeros((), device=rewards.device)
    return rollout, rewards, kl


def update(
    env: DenoisingEnv,
    policy: DenoisingPolicy,
    optimizer: torch.optim.Optimizer,
    batches: list[SamplingBatch],
    cfg,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    average_gradients: GradientSync | None = None,
) -> tuple[list[Rollout], dict[str, float]]:
    """Samples and trains on every batch of the epoch; returns the rollouts and the epoch's mean statistics."""
    params = policy.trainable_parameters()
    accumulation = cfg.gradient_accumulation_steps
    means = EpochMeans()
    rollouts = []
    policy.train()
    for i, batch in enumerate(batches):
        step_start = i - i % accumulation
        batches_in_step = min(step_start + accumulation, len(batches)) - step_start
        rollout, rewards, kl = reparameterised_rollout(
            env, policy, batch.prompts, batch.noise_seed, batch.step_seed, cfg.dpg_steps, cfg.kl_coef, batch.noise_slice
        )
        loss = -rewards.mean() + cfg.kl_coef * kl
        (loss / batches_in_step).backward()
        rollouts.append(rollout)
        means.add({"loss": loss.item(), "kl": kl.item()} if cfg.kl_coef > 0 else {"loss": loss.item()})
        if i + 1 == step_start + batches_in_step:
            norm = optimizer_step(params, optimizer, cfg.max_grad_norm, lr_scheduler, average_gradients)
            means.add({"grad_norm": norm})
    policy.eval()
    return rollouts, means.means()

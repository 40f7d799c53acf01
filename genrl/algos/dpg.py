"""Deterministic policy gradient by reward backpropagation (AlignProp; DRaFT-K) through the sampling chain.

The sampler is reparameterised: the initial latent x_T and every step's noise z_t come from seeds, so

    x_t' = mean_theta(x_t, t) + std_t * z_t                   (each step of the LCM or DDIM env)
    loss = -mean_b r(decode(x_0^b)) + kl_coef * mean_t KL(pi_theta || pi_ref)(x_t)

is a differentiable function of the weights theta. Only the last K steps (``--dpg.truncation``) keep a graph:
the earlier ones run without one, so memory grows with K, not with the horizon (DRaFT-K). With the same seeds
and weights, the chain is exactly the one ``rollout.collect`` samples for PPO.

There is no buffer and no advantage: each sampling batch is backpropagated as soon as it is scored, and an
optimizer step follows every ``gradient_accumulation_steps`` batches (the last step of an epoch takes the ones
left over), its gradient the mean over their images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from genrl.algos.base import EpochBatch
from genrl.algos.common import EpochMeans, check_settings, flag, optimizer_step
from genrl.config_sampler import sampler_name
from genrl.denoiser import denoiser
from genrl.errors import GenrlError
from genrl.policy import DenoisingPolicy
from genrl.rollout import Rollout
from genrl.samplers import sampler_class


@dataclass
class DPGConfig:
    truncation: int | None = None
    """Backpropagate through the last K denoising steps (default: all of them for LCM, 1 for DDPM)."""
    gradient_checkpointing: bool = True
    """Recompute UNet and VAE activations in the backward pass instead of keeping them."""
    gradient_accumulation_steps: int = 4
    """Sampling batches per optimizer step."""
    max_grad_norm: float = 5.0
    """The gradient is clipped to this norm before each optimizer step."""
    kl_coef: float = 0.0
    """Penalty on the closed-form per-step KL to the frozen model (the LoRA switched off); logged as kl."""


def reference_kl(policy: DenoisingPolicy, rollout: Rollout) -> torch.Tensor:
    """The mean per-step KL to the reference over the stochastic steps sampled with a graph."""
    kls = [policy.kl_to_reference(obs, dist).mean() for obs, dist in rollout.graph_steps]
    return torch.stack(kls).mean() if kls else torch.zeros((), device=rollout.rewards.device)


class DPG:
    Config = DPGConfig

    def __init__(self, config: DPGConfig):
        self.config = config
        self.grad_steps = config.truncation  # resolved against the run's sampler by ``validate``

    def validate(self, run: Any) -> None:
        cfg = self.config
        check_settings(cfg, run, ("gradient_accumulation_steps", "max_grad_norm"))
        if run.group_size > 1:
            raise GenrlError(
                f"--group-size {run.group_size} is for ppo and reinforce (DPG uses no advantages; the shapes presets "
                "set 4); add --group-size 1 for dpg, or use --preset shapes-dpg-alignment"
            )
        if run.async_rewards:
            raise GenrlError("--async-rewards cannot carry a reward's gradient; drop it for --algo dpg")
        default = sampler_class(sampler_name(run)).default_grad_steps(run.num_steps)
        self.grad_steps = default if cfg.truncation is None else cfg.truncation
        if not 1 <= self.grad_steps <= run.num_steps:
            raise GenrlError(
                f"{flag(run, 'truncation')} must be between 1 and --num-steps {run.num_steps}, got {cfg.truncation}"
            )

    def prepare(self, pipeline: Any, reward: Any) -> None:
        if not getattr(reward, "differentiable", False):
            raise GenrlError(
                f"--algo dpg needs a differentiable reward, and '{reward.name}' is not (a reward declares it with "
                "differentiable = True); use --algo ppo or reinforce, or a reward such as shapes_alignment"
            )
        if self.config.gradient_checkpointing:
            denoiser(pipeline).enable_gradient_checkpointing()
            pipeline.vae.enable_gradient_checkpointing()

    def update(self, policy: DenoisingPolicy, optimizer: torch.optim.Optimizer, batch: EpochBatch) -> dict[str, float]:
        """Samples and trains on every batch of the epoch, one after the other."""
        cfg = self.config
        params = policy.trainable_parameters()
        accumulation, count = cfg.gradient_accumulation_steps, len(batch.batches)
        means = EpochMeans()
        policy.train()
        for i in range(count):
            step_start = i - i % accumulation
            batches_in_step = min(step_start + accumulation, count) - step_start
            rollout = batch.sample(i, grad_steps=self.grad_steps)
            kl = reference_kl(policy, rollout) if cfg.kl_coef > 0 else None
            loss = -rollout.rewards.mean() + (cfg.kl_coef * kl if kl is not None else 0)
            batch.loss_scaling.backward(loss / batches_in_step)
            rollout.detach()
            means.add({"loss": loss.item(), **({"kl": kl.item()} if kl is not None else {})})
            if i + 1 == step_start + batches_in_step:
                # Equal batches on every process: the mean of their gradients is the global batch's.
                average = batch.processes.average_gradients
                means.add(optimizer_step(params, optimizer, cfg.max_grad_norm, average, batch.loss_scaling))
        policy.eval()
        return means.means()

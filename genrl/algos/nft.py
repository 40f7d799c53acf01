"""DiffusionNFT (Zheng et al., 2025, arXiv 2509.16117): online RL on the forward process, with no likelihood.

The policy samples with the *old* weights theta_old (any sampler: no log-prob is used). Each clean latent x0 is
noised at the sampler's own timesteps (a random ``int(T * timestep_fraction)`` of them per sample, fresh noise each):

    x_t = add_noise(x0, eps, t)                               (the model's forward process: flow or DDPM)

and two implicit policies are built at (x_t, t) from the trained and the old predictions (eq. 6):

    v+ = beta v_theta + (1 - beta) v_old                      the positive policy, moved towards theta
    v- = (1 + beta) v_old - beta v_theta                      the negative policy, mirrored away from it

Each regresses the clean latent, with a self-normalising weight (no gradient through it):

    L+- = mean_d (x0_hat(v+-) - x0)^2 / max(mean_d |x0_hat(v+-) - x0|, 1e-5)

The reward enters as an optimality probability r in [0, 1] (eq. 8), from the run's advantages A:

    r    = clamp(1/2 + 1/2 clip(A, -A_max, A_max) / A_max, 0, 1)
    loss = A_max / beta * mean[r L+ + (1 - r) L-] + kl_coef * mean_d (v_theta - v_ref)^2

so the per-sample optimum is v_theta = v_old + (2r - 1)(v* - v_old) / beta: good samples pull the model towards
their forward-process target, bad ones push it away. After each epoch the old weights follow the trained ones:

    theta_old <- d theta_old + (1 - d) theta,  d = min(old_decay_rate * optimizer_steps, old_decay_max)

Constants as the official SD3.5 configuration (NVlabs/DiffusionNFT ``config/nft.py``, ``scripts/train_nft_sd3.py``):
beta 1, A_max 5, kl_coef 1e-4, d = min(0.001 step, 0.5), timestep_fraction 0.99, grad clip 1. x0_hat is affine in
the prediction for every Gaussian forward process (``ModelAdapter.clean_estimate``), so the derivation holds for
epsilon- and v-prediction diffusion models as for flow models; a consistency model was never trained on the
forward process's regression, so it is refused. The minibatch loop (several processes, accumulation) is PPO's
(``common.train_minibatches``): a "step" of a sample here is one of its noised timesteps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from genrl.algos.base import EpochBatch
from genrl.algos.common import (
    MinibatchConfig,
    check_minibatches,
    check_timestep_fraction,
    flag,
    train_minibatches,
    trained_steps,
)
from genrl.buffer import Chunk, TrajectoryBuffer
from genrl.errors import GenrlError
from genrl.policy import DenoisingPolicy
from genrl.rollout import Rollout


@dataclass
class NFTConfig(MinibatchConfig):
    beta: float = 1.0
    """How far the implicit policies sit from the old one (eq. 6; the official SD3.5 value, 0.1 for OCR)."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to [-adv_clip_max, adv_clip_max] and mapped to r in [0, 1]; the loss is scaled by it."""
    max_grad_norm: float = 1.0
    """The gradient is clipped to this norm before each optimizer step."""
    kl_coef: float = 1e-4
    """Weight of mean (v_theta - v_ref)^2, the prediction's distance to the model without its LoRA (official: 1e-4)."""
    timestep_fraction: float = 0.99
    """Each sample trains on a random int(T x fraction) of the sampler's T timesteps (at least one)."""
    old_decay_rate: float = 0.001
    """The old weights' decay grows by this per optimizer step ..."""
    old_decay_max: float = 0.5
    """... up to this (0: the old weights are the trained ones after every epoch, fully on-policy)."""


def optimality_probability(advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    """r = clamp(1/2 + 1/2 clip(A, -A_max, A_max) / A_max, 0, 1) (eq. 8)."""
    return (0.5 + 0.5 * advantages.clamp(-adv_clip_max, adv_clip_max) / adv_clip_max).clamp(0, 1)


def self_normalised_error(estimate: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """mean_d (estimate - x0)^2 / stopgrad(max(mean_d |estimate - x0|, 1e-5)), per sample."""
    error = (estimate - x0).float().flatten(1)
    with torch.no_grad():
        scale = error.double().abs().mean(1).clamp(min=1e-5).float()
    return (error**2).mean(1) / scale


def nft_loss(
    x0_theta: torch.Tensor, x0_old: torch.Tensor, x0: torch.Tensor, r: torch.Tensor, beta: float, adv_clip_max: float
) -> torch.Tensor:
    """The policy loss above, from the clean estimates of the trained and the old predictions (affine in them, so
    the implicit policies' estimates are the same mixtures)."""
    positive = beta * x0_theta + (1 - beta) * x0_old
    negative = (1 + beta) * x0_old - beta * x0_theta
    per_sample = r * self_normalised_error(positive, x0) + (1 - r) * self_normalised_error(negative, x0)
    return adv_clip_max / beta * per_sample.mean()


class NFT:
    """Sample with the old weights, regress the forward process through the implicit positive and negative
    policies, move the old weights towards the trained ones."""

    Config = NFTConfig

    def __init__(self, config: NFTConfig):
        self.config = config
        self.num_steps = 0
        self.old: list[torch.Tensor] | None = None  # theta_old, in the order of policy.trainable_parameters()
        self.optimizer_steps = 0

    def validate(self, run: Any) -> None:
        check_minibatches(self.config, run, ("beta", "timestep_fraction"))
        check_timestep_fraction(self.config, run)
        cfg = self.config
        if not 0 <= cfg.old_decay_max < 1 or cfg.old_decay_rate < 0:
            raise GenrlError(
                f"{flag(run, 'old_decay_max')} must be in [0, 1) and {flag(run, 'old_decay_rate')} at least 0, got "
                f"{cfg.old_decay_max} and {cfg.old_decay_rate}"
            )
        self.num_steps = run.num_steps

    def prepare(self, pipeline: Any, reward: Any) -> None:
        from genrl.adapters import adapter_for

        if adapter_for(pipeline).model_kind == "consistency":
            raise GenrlError(
                "--algo nft regresses the forward process's denoising target, which a consistency model was not "
                "trained on (it maps x_t to the end of the ODE); use it with --env flow or --env ddpm"
            )

    # ------------------------------------------------------------------------------------------
    # The old weights: sampled with, regressed against, saved with the checkpoint
    # ------------------------------------------------------------------------------------------
    @contextmanager
    def old_weights(self, policy: DenoisingPolicy) -> Iterator[None]:
        """theta_old in the trainable parameters inside the block, theta again after it: their storages swapped,
        no copy (a full fine-tune's weights are large), exact."""
        params = policy.trainable_parameters()
        if self.old is None:  # the first epoch: theta_old starts as theta
            self.old = [p.detach().clone() for p in params]
        self.old = [old.to(p.device, p.dtype) for old, p in zip(self.old, params, strict=True)]  # a checkpoint's: CPU

        def exchange() -> None:
            for i, p in enumerate(params):
                p.data, self.old[i] = self.old[i], p.data

        exchange()
        try:
            yield
        finally:
            exchange()

    def old_decay(self) -> float:
        return min(self.config.old_decay_rate * self.optimizer_steps, self.config.old_decay_max)

    def state_dict(self) -> dict[str, Any]:
        old = None if self.old is None else [o.cpu() for o in self.old]  # None: saved before the first epoch
        return {"old": old, "optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.old, self.optimizer_steps = state["old"], int(state["optimizer_steps"])

    # ------------------------------------------------------------------------------------------
    # The epoch
    # ------------------------------------------------------------------------------------------
    def update(self, policy: DenoisingPolicy, optimizer: torch.optim.Optimizer, batch: EpochBatch) -> dict[str, float]:
        with self.old_weights(policy):
            rollouts = [batch.sample(i).resolve() for i in range(len(batch.batches))]
        buffer = self.forward_process_buffer(policy, rollouts, batch)
        stats, taken = train_minibatches(
            buffer,
            self.config,
            policy,
            optimizer,
            lambda chunk: self.loss(policy, chunk),
            batch.generator,
            batch.processes,
            batch.loss_scaling,
        )
        self.optimizer_steps += taken  # fp16's skipped steps do not count
        decay = self.old_decay()
        with torch.no_grad():
            for old, p in zip(self.old, policy.trainable_parameters(), strict=True):
                old.lerp_(p.detach(), 1 - decay)  # theta_old <- d theta_old + (1 - d) theta
        return {**stats, "old_decay": decay}

    def forward_process_buffer(
        self, policy: DenoisingPolicy, rollouts: list[Rollout], batch: EpochBatch
    ) -> TrajectoryBuffer:
        """The epoch's (sample, timestep) pairs as a trajectory buffer: a sample's "steps" are its trained timesteps,
        ``latents`` hold its clean latent x0 and ``next_latents`` the noise of each. Timesteps and noise are drawn
        for the global batch, so N processes train on the pairs one process would."""
        x0 = torch.cat([r.final_latents for r in rollouts])
        schedule = policy.sampler.schedule(self.num_steps, policy.adapter, x0.shape[-1])
        timesteps = torch.tensor(schedule.timesteps, dtype=policy.sampler.timestep_dtype, device=x0.device)
        keep = trained_steps(len(timesteps), self.config.timestep_fraction)
        buffer = TrajectoryBuffer()
        buffer.prompts = [p for r in rollouts for p in r.prompts]
        buffer.prompt_embeds = [r.prompt_embeds for r in rollouts]
        buffer.negative_prompt_embeds = rollouts[0].negative_prompt_embeds[:1]
        buffer.place(batch.processes.rank, batch.processes.count)
        num_global = buffer.num_global
        draw = lambda: torch.randperm(len(timesteps), generator=batch.generator)[:keep]
        chosen = torch.stack([draw() for _ in range(num_global)])
        seeds = torch.randint(2**62, (num_global,), generator=batch.generator)
        rows = buffer.rows_in_global_batch()
        noise = torch.stack(
            [torch.randn((keep, *x0.shape[1:]), generator=torch.Generator().manual_seed(int(seeds[g]))) for g in rows]
        ).to(x0)
        t = timesteps[chosen[rows].to(timesteps.device)]
        buffer.latents = [x0[:, None].expand(-1, keep, *x0.shape[1:])]
        buffer.next_latents = [noise]
        buffer.timesteps = buffer.next_timesteps = [t]
        buffer.log_probs = [torch.zeros(t.shape, device=x0.device)]
        buffer.advantages = batch.advantages()[rows.to(x0.device)]
        return buffer

    def loss(self, policy: DenoisingPolicy, chunk: Chunk) -> tuple[torch.Tensor, dict[str, float]]:
        """The NFT loss of a chunk of (sample, timestep) pairs, and its statistics."""
        cfg, adapter = self.config, policy.adapter
        x0, noise, t = chunk.obs["latents"], chunk.next_latents, chunk.obs["timestep"]
        embeds = chunk.obs["prompt_embeds"]
        x_t = adapter.add_noise(x0, noise, t)

        def predict() -> torch.Tensor:  # the conditional prediction: DiffusionNFT trains without guidance
            return adapter.predict(x_t, t, embeds, policy.guidance_scale)

        with torch.no_grad(), self.old_weights(policy):
            v_old = predict()
        v_theta = predict()
        r = optimality_probability(chunk.advantages, cfg.adv_clip_max)
        loss = nft_loss(
            adapter.clean_estimate(x_t, v_theta, t),
            adapter.clean_estimate(x_t, v_old, t),
            x0,
            r,
            cfg.beta,
            cfg.adv_clip_max,
        )
        stats = {"policy_loss": loss.item(), "optimality_mean": r.mean().item()}
        if cfg.kl_coef > 0:
            with policy.reference():
                v_ref = predict()
            kl = ((v_theta.float() - v_ref.float()) ** 2).flatten(1).mean(1).mean()
            loss = loss + cfg.kl_coef * kl
            stats["kl"] = kl.item()
        return loss, stats

"""An algorithm that trains on the forward process (noise a clean latent to a random t, regress the model's
prediction), written outside genrl against its public pieces only, trains every family without a change to genrl:
the shape of DiffusionNFT, Diffusion-DPO and AWM."""

import math
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from genrl.train import main
from tests.helpers import fast_args, logged_metrics


@dataclass
class DenoisingConfig:
    beta: float = 1.0
    """Temperature of the weights exp(advantage / beta)."""


class RewardWeightedDenoising:
    """Reward-weighted regression on the policy's own samples: each clean latent x0 the env decoded is noised to a
    random t (the adapter's forward process), and the model's prediction regressed on its target, weighted by
    exp(A / beta). Sampling needs no log-probs; the loss needs no sampler."""

    Config = DenoisingConfig

    def __init__(self, config: DenoisingConfig):
        self.config = config

    def update(self, policy, optimizer, batch):
        adapter, losses = policy.adapter, []
        rollouts = [batch.sample(i) for i in range(len(batch.batches))]
        advantages = batch.advantages().split([len(r.prompts) for r in rollouts])
        for rollout, advantage in zip(rollouts, advantages, strict=True):
            x0 = rollout.final_latents
            noise = torch.randn(x0.shape, generator=batch.generator)
            if adapter.model_kind == "flow":  # a sigma in (0, 1)
                t = torch.rand(x0.shape[0], generator=batch.generator).clamp(0.02, 0.98)
            else:  # an integer timestep of the training schedule
                t = torch.randint(0, 1000, (x0.shape[0],), generator=batch.generator)
            x_t = adapter.add_noise(x0, noise, t)
            prediction = adapter.predict(x_t, t, rollout.prompt_embeds, policy.guidance_scale)
            error = ((prediction - adapter.target(x0, noise, t)) ** 2).flatten(1).mean(1)
            weights = torch.exp(advantage.clamp(-5, 5) / self.config.beta)
            loss = (weights * error).mean() / len(rollouts)
            loss.backward()
            losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad()
        return {"loss": sum(losses)}


@pytest.mark.parametrize("env", ["lcm", "ddpm", "flow"])
def test_a_forward_process_plug_in_trains_every_family(tmp_path, env):
    algo = "tests.algos.test_forward_process_plugin:RewardWeightedDenoising"
    main(fast_args(tmp_path, "r", "--env", env, "--model", "tiny", "--algo", algo, "--save-every", "1"))
    run = tmp_path / "r"
    metrics = logged_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2] and all(math.isfinite(m["loss"]) for m in metrics)
    first, second = (load_file(run / "checkpoints" / f"epoch-000{e}" / "trainable.safetensors") for e in (1, 2))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the loss moved the LoRA

"""The environments: Gymnasium registration, reward timing, and a rollout equal to diffusers' own pipelines."""

import gymnasium as gym
import pytest
import torch
from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

import genrl.envs  # noqa: F401  (registers the ids)
from genrl.policy import make_policy
from genrl.rewards import jpeg_incompressibility
from tests.helpers import tiny

PROMPTS = ["a red cat", "a blue dog", "a green frog"]


def _rollout(env, policy, step_generator, seed=0):
    obs, _ = env.reset(seed=seed, options={"prompts": PROMPTS})
    rewards, stochastic = [], []
    for _ in range(env.num_steps):
        stochastic.append(bool(obs["stochastic"].all()))
        action, _ = policy.act(obs, step_generator)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
    return action, rewards, terminated, info, stochastic


@pytest.mark.parametrize("noise_last_step", [False, True])
def test_lcm_env_is_registered_and_rewards_only_at_the_end(noise_last_step):
    pipe = tiny("lcm")
    env = gym.make_vec(
        "genrl/LCM-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        pipeline=pipe,
        reward_fn=jpeg_incompressibility,
        num_steps=4,
        noise_last_step=noise_last_step,
    )
    policy = make_policy("lcm", pipe, guidance_scale=8.0, reduction="mean")
    _, rewards, terminated, info, stochastic = _rollout(env, policy, torch.Generator().manual_seed(0))
    assert all((r == 0).all() for r in rewards[:-1])
    assert (rewards[-1] > 0).all() and rewards[-1].shape == (3,)
    assert terminated.all() and info["images"].shape == (3, 3, 64, 64)
    assert stochastic == [True, True, True, noise_last_step]
    with pytest.raises(RuntimeError, match="reset"):
        env.step({"next_latents": torch.zeros(3, 4, 16, 16)})


def test_lcm_env_rollout_equals_the_diffusers_lcm_pipeline():
    pipe = tiny("lcm")
    env = gym.make_vec(
        "genrl/LCM-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        pipeline=pipe,
        reward_fn=jpeg_incompressibility,
        num_steps=4,
    )
    policy = make_policy("lcm", pipe, guidance_scale=8.0, reduction="mean")
    # The pipeline draws the initial latents and then each step's noise from one generator; so does this.
    steps_gen = torch.Generator().manual_seed(7)
    torch.randn((3, *env.latent_shape), generator=steps_gen)
    action, *_ = _rollout(env, policy, steps_gen, seed=7)

    ref = LatentConsistencyModelPipeline(**pipe.components)
    expected = ref(
        PROMPTS,
        num_inference_steps=4,
        guidance_scale=8.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(7),
    ).images
    torch.testing.assert_close(action["pred_original"], expected, rtol=1e-5, atol=1e-5)


def test_ddpm_env_rollout_equals_the_diffusers_sd_pipeline_with_ddim_eta_1():
    pipe = tiny("ddpm")
    env = gym.make_vec(
        "genrl/DDPM-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        pipeline=pipe,
        reward_fn=jpeg_incompressibility,
        num_steps=5,
    )
    policy = make_policy("ddpm", pipe, guidance_scale=5.0, reduction="mean", eta=1.0)
    steps_gen = torch.Generator().manual_seed(3)
    torch.randn((3, *env.latent_shape), generator=steps_gen)
    action, rewards, _, _, stochastic = _rollout(env, policy, steps_gen, seed=3)
    assert stochastic == [True] * 5

    ref = StableDiffusionPipeline(**pipe.components)
    expected = ref(
        PROMPTS,
        num_inference_steps=5,
        guidance_scale=5.0,
        eta=1.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(3),
    ).images
    torch.testing.assert_close(action["next_latents"], expected, rtol=1e-5, atol=1e-5)


def test_reset_needs_one_prompt_per_sub_env():
    pipe = tiny("lcm")
    env = genrl.envs.LCMEnv(2, pipe, jpeg_incompressibility, num_steps=2)
    with pytest.raises(ValueError, match="2 prompts"):
        env.reset(options={"prompts": ["only one"]})

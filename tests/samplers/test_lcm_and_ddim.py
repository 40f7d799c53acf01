"""The step maths against diffusers' schedulers and torch.distributions, exactly."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler

from genrl import steps
from genrl.samplers.ddim import ddim_step
from genrl.samplers.lcm import lcm_step
from tests.helpers import policy_for

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@pytest.mark.parametrize("num_steps", [4, 8])
def test_lcm_step_matches_diffusers_given_the_same_noise(num_steps):
    sched = LCMScheduler(**SD, original_inference_steps=50, set_alpha_to_one=True)
    sched.set_timesteps(num_steps)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(3, 4, 8, 8, generator=gen)
    schedule = sched.timesteps.tolist()
    for i, t in enumerate(schedule):
        eps = torch.randn(sample.shape, generator=gen)
        noise_gen = torch.Generator().manual_seed(100 + i)
        ours_noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(100 + i))
        ref = sched.step(eps, t, sample, generator=noise_gen)
        last = i == num_steps - 1
        nxt = t if last else schedule[i + 1]
        dist = lcm_step(
            eps,
            sample,
            torch.full((3,), t),
            torch.full((3,), nxt),
            sched.alphas_cumprod,
            stochastic=torch.full((3,), not last),
        )
        assert torch.equal(dist.pred_original, ref.denoised)
        assert torch.equal(dist.sample(ours_noise), ref.prev_sample)
        assert bool((dist.std == 0).all()) == last
        sample = ref.prev_sample


def test_lcm_step_per_sample_timesteps_match_one_at_a_time():
    """Training batches mix timesteps; each row must equal the single-timestep computation."""
    ac = LCMScheduler(**SD).alphas_cumprod
    x, eps = torch.randn(2, 3, 4, 8, 8)
    t, nxt = torch.tensor([999, 499, 259]), torch.tensor([759, 259, 259])
    stoch = torch.tensor([True, True, False])
    joint = lcm_step(eps, x, t, nxt, ac, stoch)
    for i in range(3):
        one = lcm_step(eps[i : i + 1], x[i : i + 1], t[i : i + 1], nxt[i : i + 1], ac, stoch[i : i + 1])
        assert torch.equal(joint.mean[i], one.mean[0]) and torch.equal(joint.std[i], one.std[0])


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_ddim_step_matches_diffusers_given_the_same_noise(set_alpha_to_one):
    sched = DDIMScheduler(**SD, set_alpha_to_one=set_alpha_to_one, steps_offset=1, clip_sample=False)
    sched.set_timesteps(10)
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    for t in sched.timesteps.tolist():
        eps = torch.randn(sample.shape, generator=gen)
        noise = torch.randn(sample.shape, generator=gen)
        ref = sched.step(eps, t, sample, eta=1.0, variance_noise=noise)
        prev = torch.full((2,), t - 1000 // 10)
        dist = ddim_step(
            eps, sample, torch.full((2,), t), prev, sched.alphas_cumprod, sched.final_alpha_cumprod, eta=1.0
        )
        assert torch.equal(dist.pred_original, ref.pred_original_sample)
        assert torch.equal(dist.sample(noise), ref.prev_sample)
        sample = ref.prev_sample


def test_lcm_policy_conditions_the_unet_on_w_as_the_lcm_pipeline_does():
    """w = guidance_scale - 1, embedded and passed to the UNet as ``timestep_cond``, for every row."""
    from tests.helpers import tiny

    pipe = tiny("lcm")
    seen = {}

    def keep_pipeline(_pipe, _step, _timestep, tensors):
        seen["pipeline"] = tensors["w_embedding"]
        return {}

    pipe(
        ["a red cat", "a blue dog"],
        num_inference_steps=1,
        guidance_scale=8.0,
        output_type="latent",
        callback_on_step_end=keep_pipeline,
        callback_on_step_end_tensor_inputs=["w_embedding"],
    )
    policy = policy_for("lcm", pipe, guidance_scale=8.0, reduction="mean")

    def keep_policy(_unet, _args, kwargs):
        seen["policy"] = kwargs["timestep_cond"]

    hook = pipe.unet.register_forward_pre_hook(keep_policy, with_kwargs=True)
    try:
        obs = {
            "latents": torch.zeros(2, 4, 16, 16),
            "timestep": torch.full((2,), 999),
            "next_timestep": torch.full((2,), 499),
            "prompt_embeds": torch.zeros(2, 8, 32),
            "stochastic": torch.ones(2, dtype=torch.bool),
        }
        with torch.no_grad():
            policy.distribution(obs)
    finally:
        hook.remove()
    assert seen["pipeline"].shape == (2, pipe.unet.config.time_cond_proj_dim)
    assert torch.equal(seen["policy"], seen["pipeline"])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_log_prob_matches_torch_distributions(reduction):
    gen = torch.Generator().manual_seed(2)
    mean = torch.randn(4, 4, 8, 8, generator=gen)
    std = torch.rand(4, 1, 1, 1, generator=gen) + 0.1
    value = mean + std * torch.randn(mean.shape, generator=gen)
    ref = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(value)
    ref = ref.mean(dim=(1, 2, 3)) if reduction == "mean" else ref.sum(dim=(1, 2, 3))
    ours = steps.gaussian_log_prob(value, mean, std, reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# DDIM's last step through the env and policy that training uses
# --------------------------------------------------------------------------------------------------
DDPM_PROMPTS = ["a red cat", "a blue dog", "a green frog"]


def _ddpm_setup(num_steps: int, **scheduler_overrides):
    """The tiny SD pipeline with a DDIM scheduler, its env and policy (guidance 5, eta 1, mean log-probs)."""
    from genrl.envs import make_env
    from genrl.rewards import jpeg_incompressibility
    from tests.helpers import tiny

    pipe = tiny("ddpm")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **scheduler_overrides)
    env = make_env("ddpm", len(DDPM_PROMPTS), pipe, jpeg_incompressibility, num_steps)
    policy = policy_for("ddpm", pipe, guidance_scale=5.0, reduction="mean", eta=1.0)
    return pipe, env, policy


def _collect(env, policy):
    from genrl.rollout import SamplingBatch, collect

    return collect(env, policy, SamplingBatch(DDPM_PROMPTS, noise_seed=3, step_seed=4))


def _ddpo_pytorch_step(pipe, step, num_steps, guidance_scale=5.0, eta=1.0):
    """ddpo-pytorch's ``ddim_step_with_logprob`` (diffusers_patch/ddim_with_logprob.py), written out here on its own:
    the previous timestep is clamped to [0, T - 1] before the gather, so ``final_alpha_cumprod`` is never used.
    Returns (std, log-prob) of the step's recorded action."""
    sched, unet = pipe.scheduler, pipe.unet
    latents, t = step["latents"], step["timestep"]
    embeds = torch.cat([step["negative_prompt_embeds"], step["prompt_embeds"]])
    with torch.no_grad():
        uncond, cond = unet(torch.cat([latents] * 2), torch.cat([t] * 2), embeds).sample.chunk(2)
    eps = uncond + guidance_scale * (cond - uncond)
    prev = torch.clamp(t - sched.config.num_train_timesteps // num_steps, 0, sched.config.num_train_timesteps - 1)
    alpha_t = sched.alphas_cumprod.gather(0, t).reshape(-1, 1, 1, 1)
    alpha_prev = torch.where(prev >= 0, sched.alphas_cumprod.gather(0, prev), sched.final_alpha_cumprod)
    alpha_prev = alpha_prev.reshape(-1, 1, 1, 1)
    x0 = (latents - (1 - alpha_t) ** 0.5 * eps) / alpha_t**0.5
    variance = ((1 - alpha_prev) / (1 - alpha_t)) * (1 - alpha_t / alpha_prev)
    std = eta * variance**0.5
    mean = alpha_prev**0.5 * x0 + (1 - alpha_prev - std**2) ** 0.5 * eps
    log_prob = (
        -((step["next_latents"] - mean) ** 2) / (2 * std**2)
        - torch.log(std)
        - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi)))
    )
    return std, log_prob.mean(dim=(1, 2, 3))


def test_ddim_last_step_with_set_alpha_to_one_trains_as_ddpo_pytorch_does():
    """diffusers' default set_alpha_to_one=True makes its last DDIM step deterministic (std 0): trained as a
    stochastic step it had a NaN log-prob. The env steps to timestep 0 as ddpo-pytorch does: every step keeps a
    positive std and a finite log-prob, at sampling and in training, equal to ddpo-pytorch's."""
    from genrl.buffer import TrajectoryBuffer

    num_steps = 5
    pipe, env, policy = _ddpm_setup(num_steps, set_alpha_to_one=True, steps_offset=1)
    assert float(pipe.scheduler.final_alpha_cumprod) == 1.0
    rollout = _collect(env, policy)
    assert len(rollout.steps) == num_steps

    for step in rollout.steps:
        obs = {
            **step,
            "stochastic": torch.ones_like(step["timestep"], dtype=torch.bool),
            "prompt_embeds": rollout.prompt_embeds,
            "negative_prompt_embeds": rollout.negative_prompt_embeds,
        }
        with torch.no_grad():
            dist = policy.distribution(obs)
        ref_std, ref_log_prob = _ddpo_pytorch_step(pipe, obs, num_steps)
        assert bool((dist.std > 0).all()), f"std 0 at timestep {int(step['timestep'][0])}"
        assert torch.isfinite(step["log_prob"]).all()
        torch.testing.assert_close(dist.std, ref_std, rtol=0, atol=0)
        torch.testing.assert_close(step["log_prob"], ref_log_prob)

    # The training path: the buffer's minibatches, scored by the policy as the PPO loss scores them (ratio 1).
    buffer = TrajectoryBuffer()
    buffer.add_rollout(rollout)
    buffer.advantages = torch.zeros(len(buffer))
    for minibatch in buffer.minibatches(len(buffer), 1, torch.Generator().manual_seed(0)):
        for chunk in minibatch:
            with torch.no_grad():
                log_prob = policy.action_log_prob(policy.distribution(chunk.obs), chunk.next_latents)
            assert torch.isfinite(log_prob).all()
            torch.testing.assert_close(log_prob, chunk.old_log_probs)
    assert env.next_timesteps[-1] == 0  # alphas_cumprod[0], as ddpo-pytorch's clamp gives


def test_ddim_rollout_is_the_same_whatever_set_alpha_to_one_says():
    """The env never lands on final_alpha_cumprod, so SD's set_alpha_to_one=False and diffusers' default True give
    the same trajectories (and, with False, the same as diffusers' own pipeline: tests/envs/test_envs.py)."""
    runs = [_collect(*_ddpm_setup(4, set_alpha_to_one=flag, steps_offset=1)[1:]) for flag in (False, True)]
    for a, b in zip(runs[0].steps, runs[1].steps):
        assert torch.equal(a["next_latents"], b["next_latents"]) and torch.equal(a["log_prob"], b["log_prob"])


def test_ddim_schedule_ending_on_timestep_0_keeps_a_deterministic_last_step():
    """With steps_offset 0 the schedule ends on t = 0, with no earlier timestep: that step is diffusers' (onto
    final_alpha_cumprod, std 0) and stays out of the policy; the others train with finite log-probs."""
    pipe, env, policy = _ddpm_setup(4, set_alpha_to_one=True, steps_offset=0)
    assert env.timesteps == [750, 500, 250, 0] and env.stochastic == [True, True, True, False]
    rollout = _collect(env, policy)
    assert [int(s["timestep"][0]) for s in rollout.steps] == [750, 500, 250]
    assert all(torch.isfinite(s["log_prob"]).all() for s in rollout.steps)
    with pytest.raises(ValueError, match="no stochastic step"):
        _ddpm_setup(1, steps_offset=0)

"""The step maths against diffusers' schedulers and torch.distributions, exactly."""

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler

from genrl import steps

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@pytest.mark.parametrize("num_steps", [1, 2, 3, 4, 8, 16, 50])
def test_lcm_schedule_matches_diffusers(num_steps):
    sched = LCMScheduler(**SD, original_inference_steps=50)
    sched.set_timesteps(num_steps)
    assert steps.lcm_timesteps(num_steps) == sched.timesteps.tolist()


def test_lcm_schedule_rejects_impossible_horizon():
    with pytest.raises(ValueError, match="between 1 and 50"):
        steps.lcm_timesteps(51)


@pytest.mark.parametrize("num_steps", [4, 8])
def test_lcm_step_matches_diffusers_given_the_same_noise(num_steps):
    sched = LCMScheduler(**SD, original_inference_steps=50, set_alpha_to_one=True)
    sched.set_timesteps(num_steps)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(3, 4, 8, 8, generator=gen)
    schedule = steps.lcm_timesteps(num_steps)
    for i, t in enumerate(schedule):
        eps = torch.randn(sample.shape, generator=gen)
        noise_gen = torch.Generator().manual_seed(100 + i)
        ours_noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(100 + i))
        ref = sched.step(eps, t, sample, generator=noise_gen)
        last = i == num_steps - 1
        nxt = t if last else schedule[i + 1]
        dist = steps.lcm_step(
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
    joint = steps.lcm_step(eps, x, t, nxt, ac, stoch)
    for i in range(3):
        one = steps.lcm_step(eps[i : i + 1], x[i : i + 1], t[i : i + 1], nxt[i : i + 1], ac, stoch[i : i + 1])
        assert torch.equal(joint.mean[i], one.mean[0]) and torch.equal(joint.std[i], one.std[0])


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_ddim_step_matches_diffusers_given_the_same_noise(set_alpha_to_one):
    sched = DDIMScheduler(**SD, set_alpha_to_one=set_alpha_to_one, steps_offset=1, clip_sample=False)
    sched.set_timesteps(10)
    assert steps.ddim_timesteps(10, steps_offset=1) == sched.timesteps.tolist()
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    for t in sched.timesteps.tolist():
        eps = torch.randn(sample.shape, generator=gen)
        noise = torch.randn(sample.shape, generator=gen)
        ref = sched.step(eps, t, sample, eta=1.0, variance_noise=noise)
        prev = torch.full((2,), t - 1000 // 10)
        dist = steps.ddim_step(
            eps, sample, torch.full((2,), t), prev, sched.alphas_cumprod, sched.final_alpha_cumprod, eta=1.0
        )
        assert torch.equal(dist.pred_original, ref.pred_original_sample)
        assert torch.equal(dist.sample(noise), ref.prev_sample)
        sample = ref.prev_sample


def test_guidance_embedding_matches_the_lcm_pipeline():
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([7.0, 3.5])
    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=32)
    assert torch.equal(steps.guidance_embedding(w, 32), ref)


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

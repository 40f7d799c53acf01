"""DDIM on v-prediction models and in a window of stochastic steps, against ``DDIMScheduler.step``."""

import pytest
import torch
from diffusers import DDIMScheduler

from genrl.samplers.ddim import DDIMSampler, DDIMSettings, ddim_step
from tests.helpers import tiny


def _scheduler(prediction_type: str) -> DDIMScheduler:
    return DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_is_the_schedulers_for_each_prediction_type(prediction_type, eta):
    sched = _scheduler(prediction_type)
    sched.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    for t in sched.timesteps[:-1]:
        output, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
        ref = sched.step(output, t, sample, eta=eta, variance_noise=noise)
        prev = torch.full((2,), int(t) - 100)
        dist = ddim_step(
            output,
            sample,
            torch.full((2,), int(t)),
            prev,
            sched.alphas_cumprod,
            sched.final_alpha_cumprod,
            eta,
            prediction_type,
        )
        torch.testing.assert_close(dist.pred_original, ref.pred_original_sample, rtol=0, atol=1e-6)
        torch.testing.assert_close(dist.sample(noise), ref.prev_sample, rtol=0, atol=1e-6)
        sample = ref.prev_sample


def test_outside_the_window_a_ddim_step_is_the_deterministic_one():
    pipe = tiny("ddpm")
    sampler = DDIMSampler(DDIMSettings(eta=1.0, sde_window=(1, 3)), pipe.scheduler)
    schedule = sampler.schedule(4, None, 16)
    assert schedule.stochastic == [False, True, True, False]
    gen = torch.Generator().manual_seed(0)
    latents, output = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 4, 16, 16, generator=gen)
    for index, stochastic in enumerate(schedule.stochastic):
        obs = {
            "latents": latents,
            "timestep": torch.full((2,), schedule.timesteps[index]),
            "next_timestep": torch.full((2,), schedule.next_timesteps[index]),
            "stochastic": torch.full((2,), stochastic),
        }
        dist = sampler.step(output, obs, "epsilon")
        deterministic = ddim_step(
            output,
            latents,
            obs["timestep"],
            obs["next_timestep"],
            sampler.alphas_cumprod,
            sampler.final_alpha_cumprod,
            0.0,
        )
        assert bool((dist.std > 0).all()) == stochastic
        if not stochastic:
            assert torch.equal(dist.mean, deterministic.mean)

"""The forward process every adapter offers (for denoising and flow-matching losses) against diffusers' own:
``DDPMScheduler.add_noise`` and ``get_velocity``, and ``FlowMatchEulerDiscreteScheduler.scale_noise``."""

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from genrl.adapters import adapter_for
from tests.helpers import tiny


@pytest.mark.parametrize("kind", ["lcm", "ddpm"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_diffusion_models_forward_process_and_target_are_ddpms(kind, prediction_type):
    pipe = tiny(kind)
    adapter = adapter_for(pipe)
    pipe.scheduler.register_to_config(prediction_type=prediction_type)
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 500, 990])
    torch.testing.assert_close(adapter.add_noise(x0, noise, t), ddpm.add_noise(x0, noise, t), rtol=1e-6, atol=1e-6)
    expected = noise if prediction_type == "epsilon" else ddpm.get_velocity(x0, noise, t)
    torch.testing.assert_close(adapter.target(x0, noise, t), expected, rtol=1e-6, atol=1e-6)


def test_a_flow_models_forward_process_is_the_schedulers_and_its_target_the_velocity():
    pipe = tiny("flow")
    adapter = adapter_for(pipe)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 16, 8, 8, generator=gen), torch.randn(1, 16, 8, 8, generator=gen)
    for index in (0, 4, 9):
        sigma = scheduler.sigmas[index : index + 1]
        reference = scheduler.scale_noise(x0, scheduler.timesteps[index : index + 1], noise)
        torch.testing.assert_close(adapter.add_noise(x0, noise, sigma), reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(adapter.target(x0, noise, sigma), noise - x0)

"""CPS (coefficients-preserving sampling, arXiv 2509.05952): the step against the paper's formula computed
independently in float64, the property it is named for, its schedule, and a short training run."""

import math

import numpy as np
import pytest
import torch

from genrl.envs import make_env
from genrl.samplers.cps import cps_step
from genrl.train import main
from tests.helpers import fast_args, logged_metrics


def _paper_step(v, x, sigma, sigma_next, eta):
    """Section 3 of the paper, in float64 numpy: x0 = x - sigma v, eps = x + (1 - sigma) v,
    std = sigma_next sin(eta pi / 2), mean = (1 - sigma_next) x0 + sqrt(sigma_next^2 - std^2) eps."""
    v, x = v.double().numpy(), x.double().numpy()
    std = sigma_next * math.sin(eta * math.pi / 2)
    x0, eps = x - sigma * v, x + (1 - sigma) * v
    return (1 - sigma_next) * x0 + math.sqrt(sigma_next**2 - std**2) * eps, std, x0


@pytest.mark.parametrize(("sigma", "sigma_next", "eta"), [(1.0, 0.75, 0.7), (0.6, 0.3, 0.3), (0.25, 0.0, 1.0)])
def test_the_step_is_the_papers_formula(sigma, sigma_next, eta):
    gen = torch.Generator().manual_seed(0)
    v, x = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    dist = cps_step(v, x, torch.full((2,), sigma), torch.full((2,), sigma_next), eta)
    mean, std, x0 = _paper_step(v, x, sigma, sigma_next, eta)
    np.testing.assert_allclose(dist.mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dist.std.expand_as(dist.mean).numpy(), np.full(mean.shape, std), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dist.pred_original.numpy(), x0, rtol=1e-5, atol=1e-6)


def test_with_the_true_velocity_the_next_latent_has_the_paths_coefficients():
    """x = (1 - s) x0 + s eps and v = eps - x0: the step's x_next is (1 - s') x0 plus noise of variance s'^2 in
    total, whatever eta (the flow SDE's first step over-disperses instead)."""
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4096, generator=gen), torch.randn(4096, generator=gen)
    sigma, sigma_next, eta = 0.8, 0.5, 0.9
    x = (1 - sigma) * x0 + sigma * eps
    dist = cps_step((eps - x0)[None], x[None], torch.tensor([sigma]), torch.tensor([sigma_next]), eta)
    std = float(dist.std.flatten()[0])
    # mean = (1 - s') x0 + sqrt(s'^2 - std^2) eps: the deterministic part of the noise and the fresh part add up.
    torch.testing.assert_close(dist.mean[0], (1 - sigma_next) * x0 + math.sqrt(sigma_next**2 - std**2) * eps)
    assert math.isclose((sigma_next**2 - std**2) + std**2, sigma_next**2, rel_tol=1e-6)


def test_the_last_step_to_sigma_zero_is_deterministic_and_outside_the_policy():
    from tests.helpers import tiny

    env = make_env("flow", 1, tiny("flow"), None, 4, sampler="cps", noise_level=0.5)
    assert env.sampler.name == "cps" and env.stochastic == [True, True, True, False]
    assert env.next_timesteps[-1] == 0.0
    with pytest.raises(ValueError, match="noise_mode is a setting of the flow_sde sampler, not of cps"):
        make_env("flow", 1, tiny("flow"), None, 4, sampler="cps", noise_mode="constant")


def test_cps_trains_the_shapes_flow_model_for_two_epochs(tmp_path):
    """``--env flow --sampler cps``: the one flag that pairs the flow model with CPS instead of the flow SDE."""
    main(fast_args(tmp_path, "cps", "--env", "flow", "--model", "shapes", "--sampler", "cps", "--num-steps", "4"))
    metrics = logged_metrics(tmp_path / "cps")
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["reward_mean"]) for m in metrics)
    assert any(m["approx_kl"] != 0 for m in metrics)  # the LoRA moved the policy

"""The flow-matching SDE step (Flow-GRPO, DanceGRPO) against diffusers, torch.distributions and the flow's marginals."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from genrl import steps
from genrl.samplers.flow_sde import flow_step


@pytest.fixture(autouse=True)
def _one_thread():
    """The marginal tests run hundreds of steps on 1e5 floats. Threads gain nothing at that size, and where the cores
    are busy their hand-offs cost milliseconds an op; one thread keeps the file well under a second or two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# The step, exactly
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise_mode", ["flow_grpo", "constant"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_step_without_noise_is_the_diffusers_euler_step(noise_mode, shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(10)
    assert sched.sigmas[0] == 1  # the first step takes Flow-GRPO's sigma = 1 branch
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(3, 4, 8, 8, generator=gen)
    for i, t in enumerate(sched.timesteps):
        velocity = torch.randn(sample.shape, generator=gen)
        ref = sched.step(velocity, t, sample).prev_sample
        sigma, sigma_next = sched.sigmas[i].expand(3), sched.sigmas[i + 1].expand(3)
        dist = flow_step(velocity, sample, sigma, sigma_next, noise_level=0.0, noise_mode=noise_mode)
        torch.testing.assert_close(dist.mean, ref, rtol=0, atol=0)
        assert bool((dist.std == 0).all())
        torch.testing.assert_close(dist.pred_original, sample - sched.sigmas[i] * velocity, rtol=0, atol=0)
        sample = ref


# A batch of mixed steps: from pure noise (Flow-GRPO's sigma = 1 branch), the middle, and the last step to sigma = 0.
SIGMAS = torch.tensor([1.0, 0.6, 0.3, 0.05])
SIGMAS_NEXT = torch.tensor([0.96, 0.5, 0.2, 0.0])


@pytest.mark.parametrize("noise_mode", ["flow_grpo", "constant"])
def test_flow_step_is_the_score_corrected_euler_maruyama_step(noise_mode):
    """The mean is the Euler step plus -g^2/2 score dt, the score written through x0_hat (DanceGRPO's form), and the
    std g sqrt(|dt|); g at sigma = 1 is Flow-GRPO's: 1 - sigma in its denominator becomes 1 - sigma_next."""
    gen = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 4, 4, 8, 8, generator=gen)
    a = 0.7
    dist = flow_step(v, x, SIGMAS, SIGMAS_NEXT, noise_level=a, noise_mode=noise_mode)
    sigma, sigma_next = SIGMAS.view(-1, 1, 1, 1), SIGMAS_NEXT.view(-1, 1, 1, 1)
    dt = sigma_next - sigma
    if noise_mode == "flow_grpo":
        g = a * torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_next, sigma)))
    else:
        g = torch.full_like(sigma, a)
    x0_hat = x - sigma * v
    score = -(x - (1 - sigma) * x0_hat) / sigma**2
    torch.testing.assert_close(dist.mean, x + (v - g**2 / 2 * score) * dt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist.std, g * torch.sqrt(sigma - sigma_next), rtol=1e-6, atol=0)
    torch.testing.assert_close(dist.pred_original, x0_hat, rtol=0, atol=0)
    assert bool(torch.isfinite(dist.mean).all()) and bool((dist.std > 0).all())
    # Each row of a batch of mixed sigmas is that row's step alone.
    for i in range(len(SIGMAS)):
        one = flow_step(v[i : i + 1], x[i : i + 1], SIGMAS[i : i + 1], SIGMAS_NEXT[i : i + 1], a, noise_mode)
        assert torch.equal(one.mean[0], dist.mean[i]) and torch.equal(one.std[0], dist.std[i])


def test_flow_step_computes_in_fp32_whatever_the_model_dtype():
    gen = torch.Generator().manual_seed(2)
    x, v = torch.randn(2, 4, 4, 8, 8, generator=gen)
    ours = flow_step(v.bfloat16(), x.bfloat16(), SIGMAS, SIGMAS_NEXT)
    ref = flow_step(v.bfloat16().float(), x.bfloat16().float(), SIGMAS, SIGMAS_NEXT)
    assert ours.mean.dtype == ours.std.dtype == torch.float32
    assert torch.equal(ours.mean, ref.mean) and torch.equal(ours.std, ref.std)


@pytest.mark.parametrize("noise_mode", ["flow_grpo", "constant"])
def test_flow_step_log_prob_matches_torch_distributions(noise_mode):
    gen = torch.Generator().manual_seed(3)
    x, v, noise = torch.randn(3, 4, 4, 8, 8, generator=gen)
    dist = flow_step(v, x, SIGMAS, SIGMAS_NEXT, noise_level=0.7, noise_mode=noise_mode)
    value = dist.sample(noise)
    ref = torch.distributions.Normal(dist.mean, dist.std.expand_as(dist.mean)).log_prob(value).mean(dim=(1, 2, 3))
    torch.testing.assert_close(steps.gaussian_log_prob(value, dist.mean, dist.std, "mean"), ref, rtol=1e-6, atol=1e-5)
    # A next latent in the model's bf16 is scored in fp32 all the same.
    half = value.bfloat16()
    ref = torch.distributions.Normal(dist.mean, dist.std.expand_as(dist.mean)).log_prob(half.float()).mean((1, 2, 3))
    torch.testing.assert_close(steps.gaussian_log_prob(half, dist.mean, dist.std, "mean"), ref, rtol=1e-6, atol=1e-5)


def test_flow_step_refuses_an_unknown_noise_mode():
    with pytest.raises(ValueError, match="noise_mode"):
        flow_step(torch.zeros(1, 2), torch.zeros(1, 2), SIGMAS[1:2], SIGMAS_NEXT[1:2], noise_mode="ddim")


# --------------------------------------------------------------------------------------------------
# The marginals: data x0 ~ N(M, S^2), whose velocity field is known in closed form
# --------------------------------------------------------------------------------------------------
M, S = 1.0, 0.5
N_SAMPLES = 100_000


def marginal(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of x_sigma = (1 - sigma) x0 + sigma eps: the ODE's marginals, which the SDE should keep."""
    return (1 - sigma) * M, (1 - sigma) ** 2 * S**2 + sigma**2


def exact_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[v | x_sigma], the velocity a perfect model predicts, v = eps - x0.

    (v, x_sigma) are jointly Gaussian, so E[v | x_sigma] is the linear regression of v on x_sigma:
        E v = -M,  E x_sigma = (1 - sigma) M,  Cov(v, x_sigma) = sigma - (1 - sigma) S^2
        E[v | x] = -M + Cov(v, x_sigma) / Var(x_sigma) (x - (1 - sigma) M)
    (at sigma = 1 it is x - M, at sigma = 0 it is -x).
    """
    mean, var = marginal(sigma)
    return -M + (sigma - (1 - sigma) * S**2) / var * (x - mean)


def run_sde(x: torch.Tensor, sigmas: torch.Tensor, noise_level: float, noise_mode: str, seed: int = 0):
    """Sample the chain on the grid ``sigmas`` from x at sigmas[0]; the samples' mean and variance after each step."""
    gen = torch.Generator().manual_seed(seed)
    means, variances = [], []
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        sigma, sigma_next = sigma.reshape(1), sigma_next.reshape(1)
        dist = flow_step(exact_velocity(x, sigma), x, sigma, sigma_next, noise_level, noise_mode)
        x = dist.sample(torch.randn(x.shape, generator=gen)) if noise_level > 0 else dist.mean
        means.append(x.mean())
        variances.append(x.var())
    return x, torch.stack(means), torch.stack(variances)


def assert_keeps_the_marginals(sigmas: torch.Tensor, means: torch.Tensor, variances: torch.Tensor):
    """Every step's sample mean and variance within 5 standard errors of the marginal at its sigma."""
    mean, var = marginal(sigmas[1:])
    z_mean = (means - mean) / (var / N_SAMPLES) ** 0.5
    z_var = (variances - var) / (var * math.sqrt(2 / N_SAMPLES))
    worst = int(torch.argmax(torch.maximum(z_mean.abs(), z_var.abs())))
    assert bool((z_mean.abs() < 5).all() and (z_var.abs() < 5).all()), (
        f"step {worst} to sigma {float(sigmas[worst + 1]):.3f}: mean off by {float(z_mean[worst]):.1f} SE, "
        f"variance by {float(z_var[worst]):.1f} SE"
    )


# Euler-Maruyama is first order: the variance's discretisation bias falls as 1/steps. On 250 even steps it is at most
# about 0.5% on either grid below (computed exactly, by the affine chain's moment recursion), about one standard
# error of 1e5 samples (0.45%). The mean has no bias: E x moves linearly in sigma, and the Euler step keeps that.
STEPS = 250


def test_flow_grpo_sde_keeps_the_flow_marginals_at_every_step_below_sigma_one():
    """Flow-GRPO's SDE (a = 0.7) from the exact marginal at sigma = 0.9 down to the data.

    Not from sigma = 1: there g^2 / sigma = a^2 / (1 - sigma) diverges, and the drift's factor g^2 dt / (2 sigma) is
    a^2 / 2 on the first step and a^2 / (2 j) j steps later on an even grid, whatever the step count. Euler-Maruyama
    then over-disperses the first steps by a fixed amount that more steps do not shrink (the last test), and the
    excess fades only slowly: on this grid from sigma = 1 it is 6% of the variance near 1, 2% at 0.5 and 0.6% at 0.1,
    21 standard errors at worst. Started at 0.9 (1 - sigma >> dt), the chain converges at first order like any Euler
    scheme.
    """
    sigmas = torch.linspace(0.9, 0.0, STEPS + 1)
    mean, var = marginal(sigmas[0])
    x = mean + var**0.5 * torch.randn(N_SAMPLES, 1, generator=torch.Generator().manual_seed(10))
    x_sde, means, variances = run_sde(x, sigmas, 0.7, "flow_grpo")
    assert_keeps_the_marginals(sigmas, means, variances)

    # It is the SDE that was tested, not the ODE: from the same start the ODE (a = 0) lands each sample elsewhere,
    # though on the same distribution. In 1-D the ODE's map is monotone: it keeps the samples' order, the SDE does not.
    x_ode, _, _ = run_sde(x, sigmas, 0.0, "flow_grpo")
    assert float((x_sde - x_ode).std()) > 0.5 * S
    assert float(torch.corrcoef(torch.cat([x_sde, x_ode], dim=1).T)[0, 1]) < 0.8
    assert bool((x_ode[x.argsort(dim=0).squeeze(1)].diff(dim=0) >= 0).all())


def test_dance_grpo_constant_noise_sde_keeps_the_flow_marginals_at_every_step_from_pure_noise():
    """DanceGRPO's constant g = a (0.7) is the same score-corrected SDE, so it keeps the marginals too (in continuous
    time exactly, discretised at first order). Its g^2 / sigma is bounded at sigma = 1, so unlike Flow-GRPO's it starts
    from pure noise, with no special case and no lasting error. (It diverges at sigma = 0 instead, but there the term
    it scales, the noise estimate, is a vanishing part of x: the last steps' error is small and falls with the step.)"""
    sigmas = torch.linspace(1.0, 0.0, STEPS + 1)
    x = torch.randn(N_SAMPLES, 1, generator=torch.Generator().manual_seed(11))  # x_1 = eps, whatever the data
    _, means, variances = run_sde(x, sigmas, 0.7, "constant")
    assert_keeps_the_marginals(sigmas, means, variances)


@pytest.mark.parametrize("num_steps", [10, 40, 1000])
def test_flow_grpo_first_step_from_pure_noise_overdisperses_by_a_fixed_amount(num_steps):
    """Flow-GRPO's sigma = 1 branch, taken as it is: g^2 = a^2 / (1 - sigma_next), so with dt = sigma_next - 1 the
    step from x_1 = eps (v = x - M exactly) is

        x_next = (1 + dt - a^2/2) x - M dt + a z

    whose variance exceeds the marginal's (1 + dt)^2 + dt^2 S^2 by a^4/4 - a^2 dt - dt^2 S^2: about a^4/4 = 0.06 for
    a = 0.7, however many steps the schedule has. The sampled variance matches that, not the marginal.
    """
    a = 0.7
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's
    sched.set_timesteps(num_steps)
    sigmas = sched.sigmas[:2]
    x = torch.randn(N_SAMPLES, 1, generator=torch.Generator().manual_seed(12))
    _, means, variances = run_sde(x, sigmas, a, "flow_grpo")
    dt = float(sigmas[1] - 1)
    predicted = (1 + dt - a**2 / 2) ** 2 * float(x.var()) + a**2
    marginal_mean, marginal_var = marginal(sigmas[1])
    se = predicted * math.sqrt(2 / N_SAMPLES)
    assert abs(float(variances[0]) - predicted) < 5 * se
    assert float(variances[0] - marginal_var) > 10 * se
    assert abs(float(means[0] - marginal_mean)) < 5 * (predicted / N_SAMPLES) ** 0.5  # the mean is still right

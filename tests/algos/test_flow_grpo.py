"""Flow-GRPO's parts of the update (issue 42): the KL's precision and its official form, the trained steps
(timestep_fraction), and GRPO-Guard's RatioNorm and step weights; each against an independent computation.

Sources: github.com/yifan123/flow_grpo scripts/train_sd3.py (the KL term, the loop over the first
int(num_steps x timestep_fraction) steps) and flow_grpo/diffusers_patch/sd3_sde_with_logprob.py (std_dev_t);
GRPO-Guard, arXiv 2510.22319 (RatioNorm, the 1/|dt| weights), as verl-omni's documentation writes it and
github.com/X-GenGroup/Flow-Factory trainers/grpo.py GRPOGuardTrainer computes it.
"""

import pytest
import torch

from genrl.adapters.sd3 import FLOW_GRPO_LORA_TARGETS
from genrl.algos import reinforce
from genrl.algos.common import PolicyGradientConfig, trained_steps
from genrl.buffer import TrajectoryBuffer
from genrl.envs import make_env
from genrl.policy import add_lora
from genrl.rewards import jpeg_incompressibility
from genrl.rollout import SamplingBatch, collect
from genrl.steps import gaussian_kl
from tests.helpers import expect_error, fast_args, policy_for, tiny

_DIMS = (1, 2, 3)


def _textbook_kl(mean_p, std_p, mean_q, std_q):
    """The form gaussian_kl had: log(std_q / std_p) + (std_p^2 + dmean^2) / (2 std_q^2) - 1/2, mean over dims."""
    std_p, std_q = std_p.expand_as(mean_p), std_q.expand_as(mean_q)
    return (torch.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2) - 0.5).mean(dim=_DIMS)


# --------------------------------------------------------------------------------------------------
# 1. gaussian_kl keeps fp32's precision
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [1.0, 1 + 1e-4, 1 + 1e-3, 1.03, 1.5, 0.5, 30.0])
def test_gaussian_kl_in_fp32_matches_float64_where_the_textbook_form_loses_digits(ratio):
    """Two policies' steps a little apart, as a KL to the reference is (1e-3 of a std per dim: a KL of about 5e-7
    per dim), with equal, near and unequal stds: the fp32 result is the float64 KL of the same fp32 inputs to a
    few parts in 1e7, where the old form, whose 1/2 and -1/2 cancel, was off by 0.5-4% at equal and near stds."""
    gen = torch.Generator().manual_seed(0)
    mean_q = torch.randn(4, 4, 8, 8, generator=gen)
    std_q = torch.rand(4, 1, 1, 1, generator=gen) * 0.3 + 0.05  # a flow step's std: g sqrt(|dt|)
    std_p = std_q * ratio
    mean_p = mean_q + 1e-3 * std_q * torch.randn(mean_q.shape, generator=gen)
    p64, q64 = [(m.double(), s.double().expand_as(m)) for m, s in ((mean_p, std_p), (mean_q, std_q))]
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(*p64), torch.distributions.Normal(*q64))
    expected = expected.mean(dim=_DIMS)
    (mp, sp), (mq, sq) = p64, q64  # the closed form written out, in float64
    direct = (torch.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5).mean(dim=_DIMS)
    torch.testing.assert_close(direct, expected, rtol=1e-9, atol=0)

    error = lambda kl: ((kl.double() - expected).abs() / expected).max().item()
    new, old = error(gaussian_kl(mean_p, std_p, mean_q, std_q)), error(_textbook_kl(mean_p, std_p, mean_q, std_q))
    assert new < 1e-6, new
    if abs(ratio - 1) < 1e-2:  # where the std term is small against 1/2 the old form loses the mean term's digits
        assert old > 1e-3 and old > 1000 * new, (old, new)
    if ratio == 1.0:  # equal stds: exactly (mean_p - mean_q)^2 / (2 std^2)
        exact = ((mean_p - mean_q) ** 2 / (2 * std_q**2)).mean(dim=_DIMS)
        assert torch.equal(gaussian_kl(mean_p, std_p, mean_q, std_q), exact)


# --------------------------------------------------------------------------------------------------
# 2. Which steps are trained: timestep_fraction
# --------------------------------------------------------------------------------------------------
def _flow_policy_and_buffer(num_steps: int = 10, rows: int = 4):
    """A tiny flow model (every weight trainable, perturbed so that its gradients are not special) and one sampled
    batch of ``rows`` trajectories with advantages."""
    pipe = tiny("flow")
    env = make_env("flow", rows, pipe, jpeg_incompressibility, num_steps)
    policy = policy_for("flow", pipe, guidance_scale=4.5, reduction="mean").eval()
    policy.denoiser.requires_grad_(True)
    buffer = TrajectoryBuffer()
    buffer.add_rollout(collect(env, policy, SamplingBatch(["a cat", "a dog", "a cat", "a bee"][:rows], 0, 10)))
    buffer.advantages = torch.linspace(-1, 1, len(buffer))
    return policy, buffer


class _GradCapture(torch.optim.SGD):
    """Keeps each optimizer step's gradient, takes no step."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.grads = []

    def step(self, closure=None):
        self.grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])


def test_trained_steps_are_flow_grpos_num_train_timesteps():
    assert trained_steps(10, 0.99) == 9  # flow_grpo: int(sample.num_steps * train.timestep_fraction)
    assert trained_steps(10, 1.0) == 10 and trained_steps(4, 0.99) == 3 and trained_steps(10, 0.5) == 5
    assert trained_steps(10, 0.01) == 1  # at least one


def test_timestep_fraction_trains_the_first_steps_and_averages_over_their_pairs_only():
    """One optimizer step over the whole buffer (REINFORCE's loop is PPO's): its gradient is the mean over the
    (trajectory, step) pairs of the first 9 of 10 steps of -A log pi, computed here pair by pair, and no
    minibatch holds a step past them."""
    policy, buffer = _flow_policy_and_buffer()
    rows, steps = len(buffer), buffer.num_steps
    assert steps == 10
    cfg = PolicyGradientConfig(
        train_batch_size=2, gradient_accumulation_steps=2, max_grad_norm=1e9, timestep_fraction=0.99, adv_clip_max=5
    )
    seen = set()
    for chunks in buffer.first_steps(9).minibatches(2, 1, torch.Generator().manual_seed(0)):
        for chunk in chunks:
            seen.update(zip(chunk.sample_index.tolist(), chunk.obs["timestep"].tolist()))
    sigmas = buffer.timesteps[0][0].tolist()
    assert seen == {(i, sigma) for i in range(rows) for sigma in sigmas[:9]}  # each trained pair once, the last out

    opt = _GradCapture(policy.trainable_parameters())
    reinforce.REINFORCE(cfg).train_on(buffer, policy, opt, torch.Generator().manual_seed(0))
    assert len(opt.grads) == 1

    params = policy.trainable_parameters()
    for p in params:
        p.grad = None
    policy.train()
    embeds, negative = buffer.prompt_embeds[0], buffer.negative_prompt_embeds
    for j in range(9):  # flow_grpo's order: j = 0 .. num_train_timesteps - 1
        obs = {
            "latents": buffer.latents[0][:, j],
            "timestep": buffer.timesteps[0][:, j],
            "next_timestep": buffer.next_timesteps[0][:, j],
            "stochastic": torch.ones(rows, dtype=torch.bool),
            "prompt_embeds": embeds,
            "negative_prompt_embeds": negative.expand(rows, -1, -1),
        }
        log_prob = policy.action_log_prob(policy.distribution(obs), buffer.next_latents[0][:, j])
        (-(buffer.advantages * log_prob).sum() / (rows * 9)).backward()
    policy.eval()
    for got, p in zip(opt.grads[0], params, strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# 3. The KL as Flow-GRPO computes it: kl_form flow_grpo
# --------------------------------------------------------------------------------------------------
def _flow_policy_with_lora(num_steps: int = 10, rows: int = 2):
    """The tiny flow model under a LoRA whose weights are perturbed, so that the policy and its reference (the LoRA
    off) differ; and its env."""
    pipe = tiny("flow")
    add_lora(pipe.transformer, 4, 4, FLOW_GRPO_LORA_TARGETS)
    env = make_env("flow", rows, pipe, None, num_steps)
    policy = policy_for("flow", pipe, guidance_scale=4.5, reduction="mean").eval()
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return env, policy


def test_flow_grpos_kl_is_the_closed_form_times_dt_and_its_own_formula():
    """At every step of a 10-step episode: kl_form flow_grpo is the closed-form KL (mean over the latent) times
    |dt|, and train_sd3.py's kl_loss written from its equation, ((mean - mean_ref)^2).mean(C, H, W) / (2
    std_dev_t^2) with sd3_sde_with_logprob.py's std_dev_t = a sqrt(sigma / (1 - sigma)) (sigma = 1: sigmas[1])."""
    env, policy = _flow_policy_with_lora()
    a = policy.sampler.settings.noise_level
    obs, _ = env.reset(seed=0, options={"prompts": ["a cat", "a dog"]})
    sigma_max, steps, generator = None, 0, torch.Generator().manual_seed(0)
    while True:
        with torch.no_grad():
            dist = policy.distribution(obs)
            ref = policy.reference_distribution(obs)
            official = policy.kl_to_reference(obs, dist, "flow_grpo")
            closed = policy.kl_to_reference(obs, dist, "closed")
        sigma, sigma_next = obs["timestep"].double(), obs["next_timestep"].double()
        sigma_max = sigma_next[0] if sigma_max is None else sigma_max  # sigmas[1]: the first step's next sigma
        assert (closed > 0).all()
        torch.testing.assert_close(official, closed * (sigma - sigma_next).float(), rtol=1e-5, atol=0)
        std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * a
        kl_loss = ((dist.mean.double() - ref.mean.double()) ** 2).mean(dim=_DIMS) / (2 * std_dev_t**2)
        torch.testing.assert_close(official.double(), kl_loss, rtol=1e-5, atol=0)
        assert (official < closed).all()  # |dt| < 1: the official term is the smaller
        with torch.no_grad():
            action, _ = policy.act(obs, generator)
        obs, _, terminated, _, _ = env.step(action)
        steps += 1
        if terminated.all():
            break
    assert steps == 10


def test_kl_form_flow_grpo_is_refused_off_the_flow_sde_sampler(tmp_path, capsys):
    expect_error(
        capsys,
        fast_args(tmp_path, "run", "--ppo.kl-form", "flow_grpo"),
        "--ppo.kl-form flow_grpo is Flow-GRPO's KL of the flow_sde sampler's step",
    )

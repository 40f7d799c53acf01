"""Flow-GRPO's parts of the update (issue 42): the KL's precision and its official form, the trained steps
(timestep_fraction), and GRPO-Guard's RatioNorm and step weights; each against an independent computation.

Sources: github.com/yifan123/flow_grpo scripts/train_sd3.py (the KL term, the loop over the first
int(num_steps x timestep_fraction) steps) and flow_grpo/diffusers_patch/sd3_sde_with_logprob.py (std_dev_t);
GRPO-Guard, arXiv 2510.22319 (RatioNorm, the 1/|dt| weights), as verl-omni's documentation writes it and
github.com/X-GenGroup/Flow-Factory trainers/grpo.py GRPOGuardTrainer computes it.
"""

import json
import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from genrl.adapters.sd3 import FLOW_GRPO_LORA_TARGETS
from genrl.algos import ppo, reinforce
from genrl.algos.common import PolicyGradientConfig, trained_steps
from genrl.buffer import TrajectoryBuffer
from genrl.config import replace_config
from genrl.config_file import config_to_json, read_config
from genrl.envs import make_env
from genrl.policy import add_lora
from genrl.presets import PRESETS
from genrl.rewards import jpeg_incompressibility
from genrl.rollout import SamplingBatch, collect
from genrl.samplers.flow_sde import flow_sigmas
from genrl.steps import gaussian_kl
from genrl.train import build, evaluate, main
from tests.helpers import expect_error, fast_args, logged_metrics, policy_for, tiny

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
    batch = SamplingBatch(["a cat", "a dog", "a cat", "a bee"][:rows], 0, 10)
    buffer.add_rollout(collect(env, policy, batch, keep_means=True))  # the means, as GRPO-Guard's runs keep them
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


# --------------------------------------------------------------------------------------------------
# 4. GRPO-Guard: RatioNorm and the 1/|dt| step weights
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ratio_norm_is_the_papers_ratio_on_a_hand_built_step(reduction):
    """A Gaussian step built by hand (old mean, the step's std s per sample, the noise eps it drew, a moved mean):
    RatioNorm's log-ratio is log of exp(mean(dmean * eps)) (the paper's normalised ratio), and the paper's form
    s (log pi - log pi_old) + mse / (2 s) in float64 (Flow-Factory's GRPOGuardTrainer: mse the mean squared
    difference of the means); Flow-GRPO's own log-ratio is that minus mse / (2 s^2), over s."""
    gen = torch.Generator().manual_seed(0)
    shape = (6, 4, 8, 8)
    old_mean = torch.randn(shape, generator=gen)
    s = torch.rand(6, 1, 1, 1, generator=gen) * 0.3 + 0.02
    eps = torch.randn(shape, generator=gen)
    x_next = old_mean + s * eps
    mean = old_mean + 0.01 * s * torch.randn(shape, generator=gen)  # the policy moved by a hundredth of a std
    got = ppo.ratio_norm_log_ratio(mean, old_mean, s, x_next, reduction)

    reduce = (lambda t: t.mean(dim=_DIMS)) if reduction == "mean" else (lambda t: t.sum(dim=_DIMS))
    m, o, s64, x = mean.double(), old_mean.double(), s.double(), x_next.double()
    paper = reduce((m - o) * ((x - o) / s64))  # log of exp(mean(dmu . eps)), eps the noise x_next holds
    torch.testing.assert_close(got.double(), paper, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(paper, reduce((m - o) * eps.double()), rtol=1e-4, atol=1e-9)  # the eps drawn

    log_pi = lambda mu: reduce(
        -((x - mu) ** 2) / (2 * s64**2) - torch.log(s64) - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    )
    delta_log_pi, mse = log_pi(m) - log_pi(o), reduce((m - o) ** 2)
    s_row = s64.flatten()
    torch.testing.assert_close(delta_log_pi * s_row + mse / (2 * s_row), paper, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(delta_log_pi, (paper - mse / (2 * s_row)) / s_row, rtol=1e-7, atol=1e-12)
    assert torch.equal(ppo.ratio_norm_log_ratio(old_mean, old_mean, s, x_next, reduction), torch.zeros(6))


def _chunk_of(buffer, old_means=None):
    """The buffer's first chunk in the minibatch order of a pass, optionally with other old means."""
    chunk = next(iter(buffer.minibatches(len(buffer), buffer.num_steps, torch.Generator().manual_seed(0))))[0]
    if old_means is not None:
        chunk.old_means = old_means
    return chunk


def test_ratio_norm_is_exactly_one_with_the_sampling_weights_and_moves_with_the_mean():
    """The first minibatch of an update runs with the weights that sampled: the mean recomputed for a chunk is
    the stored one, so RatioNorm's ratio is 1 exactly (the plain ratio is 1 to rounding), and ratio_mean_first_
    minibatch logs it; a moved mean moves it by exp(mean(dmean eps))."""
    policy, buffer = _flow_policy_and_buffer(num_steps=4)
    guard = ppo.PPO(ppo.PPOConfig(ratio_norm=True, clip_range=1e-4, adv_clip_max=5))
    chunk = _chunk_of(buffer)
    with torch.no_grad():
        dist = policy.distribution(chunk.obs)
        log_prob = policy.action_log_prob(dist, chunk.next_latents)
        torch.testing.assert_close(dist.mean, chunk.old_means, rtol=0, atol=1e-6)
        chunk.old_means = dist.mean.clone()  # what the same forward pass gives: the sampling weights, exactly
        _, stats = guard.loss(log_prob, chunk, guard.ratio_norm(policy, dist, chunk))
    assert stats["ratio_mean"] == 1.0 and stats["ratio_mean_first_minibatch"] == 1.0 and stats["clipfrac"] == 0
    moved = dist.mean + 1e-3 * dist.std
    noise = (chunk.next_latents - chunk.old_means) / dist.std
    with torch.no_grad():
        ratio = torch.exp(ppo.ratio_norm_log_ratio(moved, chunk.old_means, dist.std, chunk.next_latents))
    torch.testing.assert_close(ratio, torch.exp((1e-3 * dist.std * noise).mean(dim=_DIMS)))


def test_the_step_weight_is_one_over_dt_of_the_flow_schedule_and_weighs_each_pairs_loss():
    env, policy = _flow_policy_with_lora(num_steps=10)
    config, size = policy.sampler.scheduler_config, env.latent_shape[-1]
    sigmas = flow_sigmas(config, 10, **policy.adapter.flow_schedule_options(config, 10, size))  # the scheduler's
    assert env.timesteps == sigmas[:-1] and env.next_timesteps == sigmas[1:] and sigmas[-1] == 0
    obs = {"timestep": torch.tensor(sigmas[:-1]), "next_timestep": torch.tensor(sigmas[1:])}
    weights = ppo.step_weights("inverse_dt", obs)
    expected = torch.tensor([1 / (a - b) for a, b in zip(sigmas[:-1], sigmas[1:])], dtype=torch.float32)
    torch.testing.assert_close(weights, expected)
    assert ppo.step_weights("none", obs) is None
    gen = torch.Generator().manual_seed(0)
    log_ratio, advantages = 1e-4 * torch.randn(10, generator=gen), torch.randn(10, generator=gen)
    loss, ratio = ppo.clipped_surrogate(log_ratio, advantages, 1e-4, 5.0, weights)
    terms = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - 1e-4, 1 + 1e-4))
    torch.testing.assert_close(loss, (terms * expected).mean())


def test_step_weights_are_refused_off_the_flow_sde_sampler(tmp_path, capsys):
    expect_error(
        capsys,
        fast_args(tmp_path, "run", "--ppo.step-weight", "inverse_dt"),
        "--ppo.step-weight inverse_dt weighs the flow_sde sampler's steps",
    )


def test_grpo_guard_trains_on_the_tiny_flow_model(tmp_path):
    """--ppo.ratio-norm with the step weights, Flow-GRPO's KL and its trained steps: 2 epochs, 2 passes each."""
    guard = ["--ppo.ratio-norm", "--ppo.step-weight", "inverse_dt", "--ppo.inner-epochs", "2"]
    flow_grpo = ["--finetune", "lora", "--ppo.kl-coef", "0.04", "--ppo.kl-form", "flow_grpo"]
    main(
        fast_args(
            tmp_path, "guard", "--env", "flow", "--model", "tiny", *guard, *flow_grpo, "--ppo.timestep-fraction", "0.7"
        )
    )
    metrics = logged_metrics(tmp_path / "guard")
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert abs(m["ratio_mean_first_minibatch"] - 1) < 1e-6
        assert all(math.isfinite(m[key]) for key in ("loss", "kl", "grad_norm", "ratio_mean"))
    config = json.loads((tmp_path / "guard" / "config.json").read_text())["ppo"]
    assert config["ratio_norm"] and config["step_weight"] == "inverse_dt" and config["kl_form"] == "flow_grpo"


@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
def test_a_config_json_saved_before_these_settings_resumes_as_it_ran(tmp_path, algo):
    """Runs saved before kl_form, timestep_fraction, ratio_norm, step_weight and eval_ode existed trained with the
    closed KL, every step, the plain ratio and equal weights, and evaluated the policy's own steps: config.json
    without them reads back as those."""
    cfg = replace_config(PRESETS["shapes-flow-compression"], algo=algo)
    data = config_to_json(cfg)
    for key in ("kl_form", "timestep_fraction", "ratio_norm", "step_weight"):
        data[algo].pop(key, None)
    del data["eval_ode"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert read_config(tmp_path / "config.json") == cfg


# --------------------------------------------------------------------------------------------------
# 5. Evaluation with the ODE: --eval-ode
# --------------------------------------------------------------------------------------------------
def test_eval_ode_samples_the_evaluation_set_with_diffusers_euler_steps():
    """The evaluation set's first batch under --eval-ode ends where diffusers' FlowMatchEulerDiscreteScheduler's
    deterministic steps take the same initial noise (Flow-GRPO's noise_level=0 evaluation), at --eval-num-steps;
    without it, the policy's SDE ends elsewhere."""
    cfg = replace_config(
        PRESETS["tiny-compression"],
        env="flow",
        num_steps=3,
        eval_num_steps=4,
        sample_batch_size=2,
        eval_every=1,
        eval_size=2,
        group_size=1,
        train_batch_size=2,
        eval_ode=True,
    )
    cfg.validate()
    t = build(cfg)
    _, shown = evaluate(t)
    assert shown.steps == []  # nothing stochastic: no step to train

    batch, env, adapter = t.eval_batches[0], t.eval_env, t.policy.adapter
    obs, _ = env.reset(seed=batch.noise_seed, options={"prompts": batch.prompts})
    x, embeds, negative = obs["latents"], obs["prompt_embeds"], obs["negative_prompt_embeds"]
    config = t.policy.sampler.scheduler_config
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(4, **adapter.flow_schedule_options(config, 4, env.latent_shape[-1]))
    with torch.no_grad():
        for i, timestep in enumerate(scheduler.timesteps):
            sigma = torch.full((len(x),), float(scheduler.sigmas[i]))
            x = scheduler.step(adapter.guided(x, sigma, embeds, negative, cfg.guidance_scale), timestep, x).prev_sample
    torch.testing.assert_close(shown.final_latents, x, rtol=1e-5, atol=1e-6)

    sde = build(replace_config(cfg, eval_ode=False))
    _, stochastic = evaluate(sde)
    assert len(stochastic.steps) == 4 and (stochastic.final_latents - x).abs().max() > 1e-2


def test_eval_ode_is_refused_off_the_flow_family(tmp_path, capsys):
    expect_error(capsys, fast_args(tmp_path, "run", "--eval-ode"), "--eval-ode samples the flow ODE")

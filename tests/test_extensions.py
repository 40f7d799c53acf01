"""DPG, GRPO groups, KL to the reference and EMA, each against an independent computation."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genrl.advantages import compute_advantages, group_advantages, informative_groups
from genrl.envs import make_env
from genrl.policy import add_lora
from genrl.rollout import SamplingBatch, collect
from genrl.steps import gaussian_kl
from genrl.train import main
from tests.helpers import expect_error, fast_args, logged_metrics, policy_for, tiny

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
PROMPTS = ["a cat", "a dog"]
BATCH = SamplingBatch(PROMPTS, noise_seed=5, step_seed=6)


class WeightedBrightness:
    """A smooth differentiable reward: brightness weighted across the image width."""

    differentiable = True

    def __call__(self, images, prompts, metadata):
        weights = torch.linspace(0.5, 1.5, images.shape[-1], dtype=images.dtype)
        return (images * weights).mean(dim=(1, 2, 3))


def constant_for_cats(images, prompts, metadata):
    """Test reward: the same value for every cat image (its groups carry no signal), brightness otherwise."""
    brightness = images.mean(dim=(1, 2, 3))
    return torch.tensor([1.0 if "cat" in p else float(b) for p, b in zip(prompts, brightness)])


def _setup(kind: str, num_steps: int = 3, dtype=torch.float64, num_envs: int = 2):
    pipe = tiny(kind)
    add_lora(pipe.unet, 4, 4, TARGETS)
    pipe.to(dtype)
    with torch.no_grad():  # a non-zero adapter, so that the gradient reaches both LoRA factors
        gen = torch.Generator().manual_seed(3)
        for p in pipe.unet.parameters():
            if p.requires_grad:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen, dtype=dtype))
    env = make_env(kind, num_envs, pipe, WeightedBrightness(), num_steps)
    policy = policy_for(kind, pipe, guidance_scale=5.0, reduction="mean").eval()
    return pipe, env, policy


def _params(policy):
    return policy.trainable_parameters()


def _set(policy, base, direction, eps):
    with torch.no_grad():
        for p, b, d in zip(_params(policy), base, direction):
            p.copy_(b + eps * d)


# --------------------------------------------------------------------------------------------------
# DPG
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lcm", "ddpm"])
def test_dpg_gradient_matches_finite_differences(kind):
    _, env, policy = _setup(kind)
    base = [p.detach().clone() for p in _params(policy)]
    direction = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) for i, p in enumerate(base)
    ]

    def loss() -> torch.Tensor:
        return -collect(env, policy, BATCH, grad_steps=env.num_steps).rewards.mean()

    policy.zero_grad()
    loss().backward()
    analytic = sum((p.grad * d).sum() for p, d in zip(_params(policy), direction)).item()
    eps = 1e-5
    with torch.no_grad():
        _set(policy, base, direction, eps)
        plus = loss().item()
        _set(policy, base, direction, -eps)
        minus = loss().item()
    numeric = (plus - minus) / (2 * eps)
    assert analytic != 0
    assert abs(analytic - numeric) <= 1e-5 * abs(numeric) + 1e-9, (analytic, numeric)


def test_dpg_truncation_differentiates_the_last_k_steps_only():
    _, env, policy = _setup("lcm", num_steps=4)
    base = [p.detach().clone() for p in _params(policy)]
    direction = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) for i, p in enumerate(base)
    ]
    k = 2

    def frozen_prefix_loss(eps: float) -> float:
        """The first steps with the base weights, the last k with the perturbed ones."""
        with torch.no_grad():
            _set(policy, base, direction, 0.0)
            generator = torch.Generator().manual_seed(6)
            obs, _ = env.reset(seed=5, options={"prompts": PROMPTS})
            for i in range(env.num_steps):
                if i == env.num_steps - k:
                    _set(policy, base, direction, eps)
                action, _ = policy.sample_action(obs, generator)
                obs, rewards, _, _, _ = env.step(action)
        return -rewards.mean().item()

    _set(policy, base, direction, 0.0)
    policy.zero_grad()
    (-collect(env, policy, BATCH, grad_steps=k).rewards.mean()).backward()
    analytic = sum((p.grad * d).sum() for p, d in zip(_params(policy), direction)).item()
    numeric = (frozen_prefix_loss(1e-5) - frozen_prefix_loss(-1e-5)) / 2e-5
    assert abs(analytic - numeric) <= 1e-5 * abs(numeric) + 1e-9, (analytic, numeric)


def test_gradient_checkpointing_leaves_the_gradient_unchanged():
    pipe, env, policy = _setup("lcm", dtype=torch.float32)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            pipe.unet.enable_gradient_checkpointing()
            pipe.vae.enable_gradient_checkpointing()
        policy.train()
        policy.zero_grad()
        (-collect(env, policy, BATCH, grad_steps=env.num_steps).rewards.mean()).backward()
        grads.append([p.grad.clone() for p in _params(policy)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_the_reparameterised_rollout_is_the_sampled_one():
    _, env, policy = _setup("lcm", dtype=torch.float32)
    sampled = collect(env, policy, BATCH)
    rollout = collect(env, policy, BATCH, grad_steps=env.num_steps)
    torch.testing.assert_close(rollout.images.detach(), sampled.images, rtol=0, atol=1e-6)
    torch.testing.assert_close(rollout.rewards.detach(), sampled.rewards, rtol=0, atol=1e-6)
    assert rollout.rewards.requires_grad and not sampled.rewards.requires_grad
    for a, b in zip(rollout.steps, sampled.steps):  # PPO could train on a DPG rollout's steps as well
        torch.testing.assert_close(a["log_prob"], b["log_prob"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_dpg_trains_from_the_command_line(tmp_path):
    main(
        fast_args(
            tmp_path,
            "dpg",
            "--algo",
            "dpg",
            "--reward",
            "tests.test_extensions:WeightedBrightness()",
            "--batches-per-epoch",
            "2",
            "--dpg.gradient-accumulation-steps",
            "2",
        )
    )
    metrics = [json.loads(line) for line in (tmp_path / "dpg" / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward_queries"] for m in metrics] == [8, 16]
    assert all(m["loss"] == pytest.approx(-m["reward_mean"], rel=1e-5) for m in metrics)
    assert metrics[0]["grad_norm"] > 0


# --------------------------------------------------------------------------------------------------
# Groups
# --------------------------------------------------------------------------------------------------
def test_group_advantages_match_a_direct_computation():
    rewards = np.random.default_rng(0).normal(size=12)
    for normalise in (True, False):
        got = group_advantages(rewards, 4, normalise)
        for g in range(3):
            block = torch.tensor(rewards[4 * g : 4 * g + 4])
            expected = block - block.mean()
            if normalise:
                expected = expected / (block.std(unbiased=False) + 1e-6)
            np.testing.assert_allclose(got[4 * g : 4 * g + 4], expected.numpy(), rtol=1e-12)
    # Flow-GRPO's global_std: the group's mean, the whole batch's std.
    expected = (rewards.reshape(3, 4) - rewards.reshape(3, 4).mean(axis=1, keepdims=True)) / (rewards.std() + 1e-6)
    np.testing.assert_allclose(group_advantages(rewards, 4, True, batch_std=True), expected.reshape(-1), rtol=1e-12)
    adv = compute_advantages(["p"] * 6, torch.tensor([0.1, 0.1, 0.1, 0.3, 0.2, 0.3]), None, group_size=3)
    assert torch.equal(adv[:3], torch.zeros(3))  # equal rewards: exactly zero, however the mean rounds
    assert informative_groups(adv, 3).tolist() == [3, 4, 5]


def test_shared_noise_groups_start_from_the_same_latent():
    _, env, _ = _setup("lcm", dtype=torch.float32, num_envs=4)
    obs, _ = env.reset(seed=1, options={"prompts": ["a"] * 4, "shared_noise_group": 2})
    x = obs["latents"]
    assert torch.equal(x[0], x[1]) and torch.equal(x[2], x[3]) and not torch.equal(x[0], x[2])
    obs, _ = env.reset(seed=1, options={"prompts": ["a"] * 4})
    assert not torch.equal(obs["latents"][0], obs["latents"][1])


def test_groups_train_and_drop_the_groups_without_signal(tmp_path):
    reward = "tests.test_extensions:constant_for_cats"
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    args = ["--group-size", "2", "--group-shared-noise", "--reward", reward, "--prompts", str(tmp_path / "prompts.txt")]
    main(fast_args(tmp_path, "grpo", *args, "--epochs", "3"))
    run = tmp_path / "grpo"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    prompts = [s["prompt"] for s in json.loads((run / "samples" / "epoch-0001.json").read_text())]
    assert prompts[0] == prompts[1] and prompts[2] == prompts[3]
    kept = [m["groups_kept_fraction"] for m in metrics]
    assert all(k in (0.0, 0.5, 1.0) for k in kept) and min(kept) < 1  # some all-cat group was left out


# --------------------------------------------------------------------------------------------------
# KL to the reference
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_closed_form_kl_matches_torch_distributions(reduction):
    gen = torch.Generator().manual_seed(0)
    mean_p, mean_q = torch.randn(3, 4, 5, 5, generator=gen), torch.randn(3, 4, 5, 5, generator=gen)
    std_p, std_q = torch.rand(3, 1, 1, 1, generator=gen) + 0.1, torch.rand(3, 1, 1, 1, generator=gen) + 0.1
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean_p, std_p.expand_as(mean_p)),
        torch.distributions.Normal(mean_q, std_q.expand_as(mean_q)),
    )
    expected = expected.mean(dim=(1, 2, 3)) if reduction == "mean" else expected.sum(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_kl(mean_p, std_p, mean_q, std_q, reduction), expected)


def test_kl_to_reference_uses_the_model_without_its_adapter():
    _, env, policy = _setup("ddpm", dtype=torch.float32)
    obs, _ = env.reset(seed=0, options={"prompts": PROMPTS})
    dist = policy.distribution(obs)
    frozen = policy_for("ddpm", tiny("ddpm"), guidance_scale=5.0, reduction="mean")  # a fresh, LoRA-free copy
    ref = frozen.distribution(obs)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(dist.mean, dist.std.expand_as(dist.mean)),
        torch.distributions.Normal(ref.mean, ref.std.expand_as(ref.mean)),
    ).mean(dim=(1, 2, 3))
    got = policy.kl_to_reference(obs, dist)
    assert (got > 0).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(policy.distribution(obs).mean, dist.mean)  # the adapter is back on


def _kl_after_training(tmp_path, env, name, kl_coef):
    args = ["--finetune", "lora", "--learning-rate", "3e-2", "--ppo.kl-coef", str(kl_coef), "--epochs", "3"]
    main(fast_args(tmp_path, name, "--env", env, "--guidance-scale", "5", *args))
    pipe = tiny(env)
    pipe.load_lora_weights(tmp_path / name / "checkpoints" / "latest")
    sampler = make_env(env, 4, pipe, WeightedBrightness(), 3)
    policy = policy_for(env, pipe, guidance_scale=5.0, reduction="mean")
    obs, _ = sampler.reset(seed=0, options={"prompts": ["a cat"] * 4})
    with torch.no_grad():
        return policy.kl_to_reference(obs, policy.distribution(obs)).mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("env", ["lcm", "ddpm"])
def test_a_large_kl_coefficient_keeps_the_policy_near_the_reference(tmp_path, env):
    free, held = _kl_after_training(tmp_path, env, "free", 0.0), _kl_after_training(tmp_path, env, "held", 1e4)
    assert held < 0.5 * free, (held, free)
    metrics = [json.loads(line) for line in (tmp_path / "held" / "metrics.jsonl").read_text().splitlines()]
    assert all("kl" in m for m in metrics)


# --------------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ema_weights_are_saved_loadable_and_resumed_exactly(tmp_path):
    ema = ["--finetune", "lora", "--learning-rate", "3e-2", "--ema-decay", "0.5"]
    main(fast_args(tmp_path, "straight", *ema, "--epochs", "4", "--save-every", "2"))
    main(fast_args(tmp_path, "split", *ema, "--epochs", "2"))
    main(["--resume", str(tmp_path / "split"), "--epochs", "4"])
    for name in ("straight", "split"):
        assert (tmp_path / name / "samples" / "epoch-0001-ema.png").exists()
    straight, split = (
        [json.loads(line) for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
        for n in ("straight", "split")
    )
    assert "ema_reward_mean" in split[0]
    for a, b in zip(straight, split):  # LoRA's random init is seeded too
        assert (a["reward_mean"], a["loss"], a["ema_reward_mean"]) == (
            b["reward_mean"],
            b["loss"],
            b["ema_reward_mean"],
        )
    a, b = (torch.load(tmp_path / n / "checkpoints" / "latest" / "ema.pt") for n in ("straight", "split"))
    for x, y in zip(a["shadow_params"], b["shadow_params"]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    latest = tmp_path / "straight" / "checkpoints" / "latest"
    trained = load_file(latest / "pytorch_lora_weights.safetensors")
    averaged = load_file(latest / "ema" / "pytorch_lora_weights.safetensors")
    assert trained.keys() == averaged.keys()
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained)
    pipe = tiny("lcm")
    pipe.load_lora_weights(latest / "ema")  # plain diffusers reads it


@pytest.mark.slow
def test_eval_ema_evaluates_the_ema_weights_and_leaves_training_alone(tmp_path, capsys):
    ema = ["--finetune", "lora", "--learning-rate", "3e-2", "--ema-decay", "0.5", "--eval-every", "1"]
    main(fast_args(tmp_path, "live", *ema))
    main(fast_args(tmp_path, "ema", *ema, "--eval-ema"))
    live, averaged = (logged_metrics(tmp_path / name) for name in ("live", "ema"))
    training = lambda records: [(r["reward_mean"], r["loss"]) for r in records if "loss" in r]
    assert training(live) == training(averaged)  # the swap in and out of the EMA weights is exact
    evaluations = lambda records: [r["eval_reward_mean"] for r in records if "eval_reward_mean" in r]
    assert evaluations(live)[0] == evaluations(averaged)[0]  # epoch 0: the EMA is the untrained weights
    assert evaluations(live)[1:] != evaluations(averaged)[1:]
    expect_error(capsys, fast_args(tmp_path, "none", "--eval-ema"), "--ema-decay")

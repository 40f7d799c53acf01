"""Buffer, advantages, losses: each against an independent computation."""

import numpy as np
import pytest
import torch

from genrl.advantages import PerPromptStatTracker, batch_advantages
from genrl.algos import ppo, reinforce
from genrl.algos.common import PolicyGradientConfig
from genrl.buffer import TrajectoryBuffer
from genrl.envs import make_env
from genrl.policy import add_lora
from genrl.rewards import jpeg_incompressibility
from genrl.rollout import SamplingBatch, collect
from tests.helpers import policy_for, tiny


def test_per_prompt_tracker_matches_a_direct_computation():
    tracker = PerPromptStatTracker(buffer_size=3, min_count=2)
    history = {}
    rng = np.random.default_rng(0)
    for _ in range(4):
        prompts = list(rng.choice(["a", "b", "c"], size=6))
        rewards = rng.normal(size=6)
        got = tracker.update(prompts, rewards)
        for p in set(prompts):
            mask = np.array(prompts) == p
            history[p] = (history.get(p, []) + list(rewards[mask]))[-3:]
            pool = rewards if len(history[p]) < 2 else np.array(history[p])
            np.testing.assert_allclose(got[mask], (rewards[mask] - pool.mean()) / (pool.std() + 1e-6))
    restored = PerPromptStatTracker(1, 1)
    restored.load_state_dict(tracker.state_dict())
    assert restored.update(["a"], np.array([1.0])) == tracker.update(["a"], np.array([1.0]))


def test_batch_advantages_are_standardised():
    adv = batch_advantages(np.array([1.0, 2.0, 3.0, 6.0]))
    assert abs(adv.mean()) < 1e-9 and abs(adv.std() - 1) < 1e-5


def test_clipped_surrogate_equals_the_min_form_of_the_ppo_objective():
    gen = torch.Generator().manual_seed(0)
    old = torch.randn(64, generator=gen)
    new = old + 0.3 * torch.randn(64, generator=gen)
    adv = 4 * torch.randn(64, generator=gen)
    loss, ratio = ppo.clipped_surrogate_loss(new, old, adv, clip_range=0.1, adv_clip_max=3.0)
    a = adv.clamp(-3, 3)
    r = (new - old).exp()
    expected = -torch.minimum(a * r, a * r.clamp(0.9, 1.1)).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ratio, r)


def test_reinforce_and_ppo_gradients_agree_where_the_ratio_is_one():
    logp = torch.randn(16, requires_grad=True)
    adv = torch.randn(16)
    (g_ppo,) = torch.autograd.grad(ppo.clipped_surrogate_loss(logp, logp.detach(), adv, 1e-4, 10)[0], logp)
    (g_rf,) = torch.autograd.grad(reinforce.reinforce_loss(logp, adv, 10), logp)
    torch.testing.assert_close(g_ppo, g_rf)


def _buffer(env_kind: str, num_steps: int):
    pipe = tiny(env_kind)
    add_lora(pipe.unet, 4, 4, ["to_q", "to_k", "to_v", "to_out.0"])
    env = make_env(env_kind, 4, pipe, jpeg_incompressibility, num_steps)
    policy = policy_for(env_kind, pipe, guidance_scale=5.0, reduction="mean").eval()
    # Make the adapter non-trivial, so that a mismatch between sampling and training would show.
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    buffer = TrajectoryBuffer()
    for b in range(2):
        buffer.add_rollout(collect(env, policy, SamplingBatch(["a cat", "a dog", "a cat", "a bee"], b, 10 + b)))
    buffer.advantages = torch.linspace(-1, 1, len(buffer))
    return policy, buffer


@pytest.mark.parametrize("env_kind,num_steps,per_forward", [("lcm", 4, 1), ("lcm", 4, 3), ("ddpm", 3, 2)])
def test_training_recomputes_the_sampling_log_probs(env_kind, num_steps, per_forward):
    policy, buffer = _buffer(env_kind, num_steps)
    assert buffer.num_steps == (num_steps - 1 if env_kind == "lcm" else num_steps)
    seen = set()
    with torch.no_grad():
        for chunks in buffer.minibatches(2, per_forward, torch.Generator().manual_seed(0)):
            for chunk in chunks:
                log_prob = policy.action_log_prob(policy.distribution(chunk.obs), chunk.next_latents)
                ratio = torch.exp(log_prob - chunk.old_log_probs)
                assert (ratio - 1).abs().max() < 1e-6
                seen.update(zip(chunk.sample_index.tolist(), chunk.obs["timestep"].tolist()))
    assert len(seen) == len(buffer) * buffer.num_steps  # every (trajectory, step) pair exactly once


class _REINFORCEWithAdvantageMean(reinforce.REINFORCE):
    def loss(self, log_prob, chunk):
        return super().loss(log_prob, chunk)[0], {"adv": chunk.advantages.mean().item()}


def _train(policy, opt, buffer, processes=None, **settings):
    """One REINFORCE pass over ``buffer`` (its loop is PPO's), without gradient clipping; its statistics."""
    algorithm = _REINFORCEWithAdvantageMean(PolicyGradientConfig(max_grad_norm=1e9, **settings))
    return algorithm.train_on(buffer, policy, opt, torch.Generator().manual_seed(0), processes)


class _GradCapture(torch.optim.SGD):
    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.grads = []

    def step(self, closure=None):  # a process without rows in a step has no gradient: zeros, as summed
        params = [p for g in self.param_groups for p in g["params"]]
        self.grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 2, 3])
def test_steps_per_forward_leaves_the_gradient_unchanged(accumulation):
    policy, buffer = _buffer("lcm", 4)
    captured = []
    for per_forward in (1, 3):
        opt = _GradCapture(policy.trainable_parameters())
        _train(
            policy,
            opt,
            buffer,
            train_batch_size=2,
            gradient_accumulation_steps=accumulation,
            steps_per_forward=per_forward,
        )
        captured.append(opt.grads)
    assert len(captured[0]) == -(-4 // accumulation)
    for a, b in zip(*captured):
        for ga, gb in zip(a, b):
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)


def test_ppo_update_first_minibatch_ratio_is_one_and_the_weights_move():
    policy, buffer = _buffer("lcm", 3)
    before = [p.clone() for p in policy.trainable_parameters()]
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3)
    cfg = ppo.PPOConfig(
        clip_range=1e-4,
        adv_clip_max=10,
        inner_epochs=2,
        train_batch_size=2,
        gradient_accumulation_steps=2,
        steps_per_forward=2,
        max_grad_norm=5.0,
        kl_coef=0.0,
    )
    stats = ppo.PPO(cfg).train_on(buffer, policy, opt, torch.Generator().manual_seed(0))
    assert abs(stats["ratio_mean_first_minibatch"] - 1) < 1e-6
    assert {"loss", "approx_kl", "clipfrac", "ratio_mean", "grad_norm"} <= set(stats)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.trainable_parameters()))


def test_accumulated_gradient_is_the_mean_over_its_minibatches_leftovers_included():
    policy, buffer = _buffer("lcm", 3)

    def grads(accumulation):
        opt = _GradCapture(policy.trainable_parameters())
        _train(policy, opt, buffer, train_batch_size=2, gradient_accumulation_steps=accumulation)
        return opt.grads

    single, grouped = grads(1), grads(3)  # 4 minibatches: groups of 3 and 1
    assert len(single) == 4 and len(grouped) == 2
    for i, g in enumerate(grouped[0]):
        torch.testing.assert_close(g, sum(s[i] for s in single[:3]) / 3, rtol=1e-4, atol=1e-7)
    for g, s in zip(grouped[1], single[3]):
        torch.testing.assert_close(g, s, rtol=1e-4, atol=1e-7)


def test_a_subset_buffer_trains_on_a_smaller_last_minibatch_with_the_same_mean_gradient():
    policy, buffer = _buffer("lcm", 3)
    kept = buffer.subset(torch.tensor([0, 2, 3, 5, 7]))
    assert kept.prompts == [buffer.prompts[i] for i in (0, 2, 3, 5, 7)]
    torch.testing.assert_close(kept.advantages, buffer.advantages[[0, 2, 3, 5, 7]])
    assert kept.minibatch_sizes(2) == [2, 2, 1]
    grads = []
    for batch_size, accumulation in ((2, 3), (5, 1)):  # three minibatches in one step, or one of all five
        opt = _GradCapture(policy.trainable_parameters())
        _train(policy, opt, kept, train_batch_size=batch_size, gradient_accumulation_steps=accumulation)
        assert len(opt.grads) == 1
        grads.append(opt.grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def _share(buffer: TrajectoryBuffer, rank: int, count: int) -> TrajectoryBuffer:
    """Process ``rank``'s rows of each sampling batch of ``buffer``, as ``count`` processes would have sampled them."""
    part = lambda rows: rows[rank * len(rows) // count : (rank + 1) * len(rows) // count]
    per_batch = len(buffer.prompt_embeds[0])
    local = TrajectoryBuffer(negative_prompt_embeds=buffer.negative_prompt_embeds)
    for name in ("prompt_embeds", "latents", "next_latents", "timesteps", "next_timesteps", "log_probs"):
        setattr(local, name, [part(t) for t in getattr(buffer, name)])
    rows = buffer.prompts
    local.prompts = [x for b in range(0, len(rows), per_batch) for x in part(rows[b : b + per_batch])]
    local.place(rank, count)
    local.advantages = buffer.advantages[local.global_rows]
    return local


class _OneOfTwo:
    """A process of two, alone: the test adds the two processes' gradients and totals up itself."""

    count = 2

    def sum_gradients(self, params):
        pass

    def sum_totals(self, totals):
        self.totals = totals
        return totals


def test_two_processes_cut_the_minibatches_of_one_from_the_global_batch():
    policy, buffer = _buffer("lcm", 4)  # 2 batches of 4, 3 steps
    shares = [_share(buffer, rank, 2) for rank in (0, 1)]
    assert shares[1].global_rows.tolist() == [2, 3, 6, 7] and shares[1].prompts == ["a cat", "a bee"] * 2
    torch.testing.assert_close(torch.cat([s.advantages for s in shares]).sort().values, buffer.advantages)
    pairs = lambda chunks: {(a, t) for c in chunks for a, t in zip(c.advantages.tolist(), c.obs["timestep"].tolist())}
    single = list(buffer.minibatches(4, 2, torch.Generator().manual_seed(0)))
    split = [list(s.minibatches(4, 2, torch.Generator().manual_seed(0))) for s in shares]
    assert len(single) == len(split[0]) == len(split[1]) == 2
    for i, chunks in enumerate(single):
        assert pairs(chunks) == pairs(split[0][i]) | pairs(split[1][i])
        assert not pairs(split[0][i]) & pairs(split[1][i])
    # The same groups kept on every process; process 1 keeps one trajectory, so one of the two global minibatches
    # (of 4 and 1) holds no row of it.
    kept = torch.tensor([0, 1, 4, 5, 6])
    single = list(buffer.subset(kept).minibatches(4, 2, torch.Generator().manual_seed(0)))
    split = [list(s.subset(kept).minibatches(4, 2, torch.Generator().manual_seed(0))) for s in shares]
    assert [s.subset(kept).global_rows.tolist() for s in shares] == [[0, 1, 2, 3], [4]]
    assert sum(not chunks for chunks in split[1]) == 1 and all(split[0])
    for i, chunks in enumerate(single):
        assert pairs(chunks) == pairs(split[0][i]) | pairs(split[1][i])


# Process 0 holds trajectories 0, 1, 4, 5, process 1 the others. Keeping 0, 1, 4, 5, 6 leaves process 1 one: it has
# no row in one of the two minibatches; keeping 0, 1, 4, 5 leaves it none at all.
@pytest.mark.slow
@pytest.mark.parametrize(
    "kept,accumulation", [(None, 1), ([0, 1, 4, 5, 6], 1), (None, 2), ([0, 1, 4, 5], 1), ([0, 1, 4, 5, 6], 2)]
)
def test_two_processes_summed_make_the_gradients_and_statistics_of_one(kept, accumulation):
    policy, buffer = _buffer("lcm", 3)  # 2 batches of 4, 2 steps
    subset = kept is not None
    kept = torch.tensor(kept or [])

    def run(buffer, processes, batch_size):
        opt = _GradCapture(policy.trainable_parameters())
        stats = _train(
            policy, opt, buffer, processes, train_batch_size=batch_size, gradient_accumulation_steps=accumulation
        )
        return opt.grads, stats

    one_grads, one_stats = run(buffer.subset(kept) if subset else buffer, None, 4)
    shares = [_share(buffer, rank, 2) for rank in (0, 1)]
    processes = [_OneOfTwo(), _OneOfTwo()]
    two = [run(s.subset(kept) if subset else s, p, 2)[0] for s, p in zip(shares, processes)]
    assert len(one_grads) == len(two[0]) == len(two[1]) == (2 if accumulation == 1 and len(kept) != 4 else 1)
    for step, grads in enumerate(one_grads):
        for i, g in enumerate(grads):
            torch.testing.assert_close(two[0][step][i] + two[1][step][i], g, rtol=1e-4, atol=1e-7)
    for key in ("loss", "adv"):  # (each grad_norm here is of its own, unsummed gradient)
        total = sum(p.totals[key][0] for p in processes if key in p.totals)
        weight = sum(p.totals[key][1] for p in processes if key in p.totals)
        assert abs(total / weight - one_stats[key]) < 1e-6 * max(1, abs(one_stats[key])), key

"""The envs as Gymnasium users expect them: ``gymnasium.make`` gives one image to step by hand, in numpy, that
``check_env`` accepts; actions drawn from ``action_space.sample()`` are accepted, by it and by the vector env."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from genrl.envs import SingleImageEnv, make_env
from genrl.presets import PRESETS
from genrl.prompts import load_prompts
from genrl.rewards import jpeg_compressibility
from genrl.samplers import sampler_class
from tests.helpers import policy_for, tiny

ENV_IDS = {"lcm": "genrl/LCM-v0", "ddpm": "genrl/DDPM-v0"}


@pytest.fixture(scope="module")
def pipes():
    """The tiny pipelines, loaded once; the envs below share them and never change them."""
    return {"lcm": tiny("lcm"), "ddpm": tiny("ddpm")}


def _make(pipes, kind: str, **kwargs) -> gym.Env:
    return gym.make(ENV_IDS[kind], pipeline=pipes[kind], num_steps=2, **kwargs)


def _episode(env: gym.Env, act, seed: int = 0):
    """Steps ``env`` by hand to the end with ``act(obs)``; every observation is checked against the declared space."""
    obs, info = env.reset(seed=seed)
    assert obs in env.observation_space and isinstance(info["prompt"], str)
    rewards, terminated = [], False
    while not terminated:
        action = act(obs)
        assert action in env.action_space
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs in env.observation_space
        assert type(reward) is float and type(terminated) is bool and truncated is False
        rewards.append(reward)
    return rewards, info


def _assert_scored(env: gym.Env, rewards: list[float], info: dict) -> None:
    assert len(rewards) == env.unwrapped.num_steps
    assert rewards[:-1] == [0.0] * (len(rewards) - 1) and np.isfinite(rewards[-1]) and rewards[-1] != 0
    images = info["images"]
    assert isinstance(images, np.ndarray) and images.shape == (3, 64, 64) and 0 <= images.min() <= images.max() <= 1


@pytest.mark.parametrize("kind", ["lcm", "ddpm"])
def test_make_gives_a_single_env_stepped_by_hand_with_sampled_actions(pipes, kind):
    env = _make(pipes, kind)
    assert isinstance(env.unwrapped, gym.Env) and not isinstance(env.unwrapped, gym.vector.VectorEnv)
    assert env.spec.id == ENV_IDS[kind] and env.unwrapped.num_steps == 2
    env.action_space.seed(0)
    rewards, info = _episode(env, lambda obs: env.action_space.sample())
    _assert_scored(env, rewards, info)


@pytest.mark.parametrize("kind", ["lcm", "ddpm"])
def test_a_policy_steps_the_single_env_as_it_steps_the_vector_env(pipes, kind):
    env = _make(pipes, kind, reward_fn=jpeg_compressibility)
    single = env.unwrapped
    policy = policy_for(kind, pipes[kind], guidance_scale=5.0, reduction="mean")
    generator = torch.Generator().manual_seed(1)

    def act(obs):
        action, _ = policy.act(single.to_policy(obs), generator)
        return single.from_policy(action)

    rewards, info = _episode(env, act, seed=3)
    _assert_scored(env, rewards, info)

    # The same episode in a one-image vector env: the numpy round trips lose nothing. The single env's reset draws
    # the noise's seed from its np_random, seeded as Gymnasium seeds it.
    vector = make_env(kind, 1, pipes[kind], jpeg_compressibility, num_steps=2)
    noise_seed = int(gym.utils.seeding.np_random(3)[0].integers(2**63 - 1))
    obs, _ = vector.reset(seed=noise_seed, options={"prompts": [single.prompt]})
    generator.manual_seed(1)
    for _ in range(vector.num_steps):
        action, _ = policy.act(obs, generator)
        obs, reward, _, _, vector_info = vector.step(action)
    assert reward.item() == rewards[-1]
    np.testing.assert_array_equal(vector_info["images"][0].numpy(), info["images"])


def test_default_make_is_the_shapes_model_with_its_prompts_reward_and_steps():
    env = gym.make("genrl/LCM-v0")
    single = env.unwrapped
    assert type(single) is SingleImageEnv and single.vector_env.reward_fn.name == "jpeg_compressibility"
    assert single.kind == "lcm" and single.num_steps == PRESETS["shapes-rlcm-compression"].num_steps
    assert sampler_class("ddim").default_steps == PRESETS["shapes-ddpo-compression"].num_steps
    assert single.prompts == load_prompts("shapes_train")
    rewards, info = _episode(env, lambda obs: env.action_space.sample())
    assert set(info) == {"images", "reward_parts"} and np.isfinite(rewards[-1])


@pytest.mark.parametrize("kind", ["lcm", "ddpm"])
def test_check_env_passes_warning_only_of_the_unbounded_latents(pipes, kind):
    env = _make(pipes, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    # Latents and text embeddings are unbounded by nature: Box(-inf, inf) is their honest space.
    assert caught and all("infinity" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_reset_draws_a_prompt_from_the_seed_or_takes_the_one_given(pipes):
    env = _make(pipes, "lcm", prompts=["a red circle", "a blue square", "a green triangle"])
    first, info = env.reset(seed=5)
    again, info_again = env.reset(seed=5)
    assert info == info_again and all(np.array_equal(first[k], again[k]) for k in first)
    seen = {env.reset(seed=seed)[1]["prompt"] for seed in range(20)}
    assert seen == {"a red circle", "a blue square", "a green triangle"}

    fixed, info = env.reset(seed=5, options={"prompt": "a cat", "metadata": {"n": 1}})
    assert info == {"prompt": "a cat"} and env.unwrapped.vector_env.prompt_metadata == [{"n": 1}]
    np.testing.assert_array_equal(fixed["latents"], first["latents"])  # fixing the prompt keeps the seed's noise
    with pytest.raises(ValueError, match="options 'prompt' and 'metadata'"):
        env.reset(options={"prompts": ["a cat"]})


def _one_line_error(env, action) -> str:
    with pytest.raises(ValueError) as info:
        env.step(action)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_wrong_actions_are_one_line_value_errors(pipes):
    env = _make(pipes, "lcm")
    env.reset(seed=0)
    good = env.action_space.sample()
    message = _one_line_error(env, {**good, "next_latents": np.zeros((1, 4, 16, 16), np.float32)})
    assert message == (
        "step: action['next_latents'] must be a float tensor or float numpy array of shape (4, 16, 16), "
        "got a float32 array of shape (1, 4, 16, 16)"
    )
    assert "got keys ['next_latents']" in _one_line_error(env, {"next_latents": good["next_latents"]})
    assert "float numpy array" in _one_line_error(env, {**good, "pred_original": np.zeros((4, 16, 16), np.int64)})
    assert "NaN or infinite" in _one_line_error(env, {**good, "pred_original": np.full((4, 16, 16), np.inf)})
    _, reward, terminated, _, _ = env.step(good)  # refused actions left the episode where it was
    assert not terminated and reward == 0.0


def test_vector_env_takes_numpy_actions_and_keeps_tensors_as_they_are(pipes):
    env = make_env("lcm", 2, pipes["lcm"], jpeg_compressibility, num_steps=2)
    env.action_space.seed(0)
    env.reset(seed=0, options={"prompts": ["a", "b"]})
    sampled = env.action_space.sample()
    obs, *_ = env.step(sampled)
    assert obs["latents"].dtype == env.dtype and obs["latents"].device == env.device
    np.testing.assert_array_equal(obs["latents"].numpy(), sampled["next_latents"])
    sampled["next_latents"][:] = 0  # the env copied the array: the caller's later changes do not reach it
    assert obs["latents"].abs().sum() > 0

    action = {k: torch.from_numpy(v) for k, v in env.action_space.sample().items()}
    obs, rewards, terminated, _, _ = env.step(action)
    assert obs["latents"] is action["next_latents"]  # uncopied: a reparameterised rollout's graph flows through it
    assert terminated.all() and torch.isfinite(rewards).all()

    env.reset(seed=0, options={"prompts": ["a", "b"]})
    with pytest.raises(ValueError, match=r"of shape \(2, 4, 16, 16\), got a float32 array of shape \(4, 16, 16\)"):
        env.step({k: v[0] for k, v in env.action_space.sample().items()})


def test_make_vec_sync_stacks_single_envs(pipes):
    envs = gym.make_vec("genrl/LCM-v0", 2, vectorization_mode="sync", pipeline=pipes["lcm"], num_steps=2)
    assert isinstance(envs, gym.vector.SyncVectorEnv) and envs.observation_space["latents"].shape == (2, 4, 16, 16)
    obs, _ = envs.reset(seed=0)
    for _ in range(2):
        assert obs in envs.observation_space
        obs, rewards, terminated, _, _ = envs.step(envs.action_space.sample())
    assert terminated.all() and np.isfinite(rewards).all() and (rewards != 0).all()

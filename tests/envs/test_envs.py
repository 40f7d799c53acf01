"""The environments: Gymnasium registration and factory, declared spaces, the reward contract, the timestep
schedules, and a rollout equal to diffusers' own pipelines."""

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LatentConsistencyModelPipeline, LCMScheduler, StableDiffusionPipeline

from genrl.envs import DenoisingEnv, make_env
from genrl.rewards import CheckedReward, jpeg_incompressibility
from genrl.rollout import SamplingBatch, collect
from tests.helpers import policy_for, tiny

PROMPTS = ["a red cat", "a blue dog", "a green frog"]


def _rollout(env, policy, step_generator, seed=0):
    obs, _ = env.reset(seed=seed, options={"prompts": PROMPTS})
    rewards, stochastic = [], []
    for _ in range(env.num_steps):
        stochastic.append(bool(obs["stochastic"].all()))
        action, _ = policy.act(obs, step_generator)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
    return action, rewards, terminated, info, stochastic


@pytest.mark.parametrize("noise_last_step", [False, True])
def test_lcm_env_is_registered_and_rewards_only_at_the_end(noise_last_step):
    pipe = tiny("lcm")
    env = gym.make_vec(
        "genrl/LCM-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        pipeline=pipe,
        reward_fn=jpeg_incompressibility,
        num_steps=4,
        noise_last_step=noise_last_step,
    )
    policy = policy_for("lcm", pipe, guidance_scale=8.0, reduction="mean")
    _, rewards, terminated, info, stochastic = _rollout(env, policy, torch.Generator().manual_seed(0))
    assert all((r == 0).all() for r in rewards[:-1])
    assert (rewards[-1] > 0).all() and rewards[-1].shape == (3,)
    assert terminated.all() and info["images"].shape == (3, 3, 64, 64)
    assert stochastic == [True, True, True, noise_last_step]
    with pytest.raises(RuntimeError, match="reset"):
        env.step({"next_latents": torch.zeros(3, 4, 16, 16)})


def test_lcm_env_rollout_equals_the_diffusers_lcm_pipeline():
    pipe = tiny("lcm")
    env = gym.make_vec(
        "genrl/LCM-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        pipeline=pipe,
        reward_fn=jpeg_incompressibility,
        num_steps=4,
    )
    policy = policy_for("lcm", pipe, guidance_scale=8.0, reduction="mean")
    # The pipeline draws the initial latents and then each step's noise from one generator; so does this.
    steps_gen = torch.Generator().manual_seed(7)
    torch.randn((3, *env.latent_shape), generator=steps_gen)
    action, *_ = _rollout(env, policy, steps_gen, seed=7)

    ref = LatentConsistencyModelPipeline(**pipe.components)
    expected = ref(
        PROMPTS,
        num_inference_steps=4,
        guidance_scale=8.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(7),
    ).images
    torch.testing.assert_close(action["pred_original"], expected, rtol=1e-5, atol=1e-5)


def test_ddpm_env_rollout_equals_the_diffusers_sd_pipeline_with_ddim_eta_1():
    pipe = tiny("ddpm")
    env = gym.make_vec(
        "genrl/DDPM-v0",
        num_envs=3,
        vectorization_mode="vector_entry_point",
        pipeline=pipe,
        reward_fn=jpeg_incompressibility,
        num_steps=5,
    )
    policy = policy_for("ddpm", pipe, guidance_scale=5.0, reduction="mean", eta=1.0)
    steps_gen = torch.Generator().manual_seed(3)
    torch.randn((3, *env.latent_shape), generator=steps_gen)
    action, rewards, _, _, stochastic = _rollout(env, policy, steps_gen, seed=3)
    assert stochastic == [True] * 5

    ref = StableDiffusionPipeline(**pipe.components)
    expected = ref(
        PROMPTS,
        num_inference_steps=5,
        guidance_scale=5.0,
        eta=1.0,
        output_type="latent",
        generator=torch.Generator().manual_seed(3),
    ).images
    torch.testing.assert_close(action["next_latents"], expected, rtol=1e-5, atol=1e-5)


def test_reset_needs_one_prompt_per_sub_env():
    pipe = tiny("lcm")
    env = make_env("lcm", 2, pipe, jpeg_incompressibility, num_steps=2)
    with pytest.raises(ValueError, match="2 prompts"):
        env.reset(options={"prompts": ["only one"]})
    with pytest.raises(ValueError, match="as a list of 2 strings"):  # not the prompts "a" and "b"
        env.reset(options={"prompts": "ab"})


def test_step_refuses_actions_it_cannot_mean():
    env = make_env("lcm", 2, tiny("lcm"), jpeg_incompressibility, num_steps=2)
    obs, _ = env.reset(seed=0, options={"prompts": ["a", "b"]})
    good = torch.zeros_like(obs["latents"])
    wrong_shape = {"next_latents": good[:1], "pred_original": good[:1]}
    non_finite = {"next_latents": good.clone().fill_(float("nan")), "pred_original": good}
    wrong_keys = {"next_latents": good}
    for action, message in [
        (wrong_shape, "must be a float tensor or float numpy array of shape"),
        (non_finite, "NaN or infinite"),
        (wrong_keys, r"keys \['next_latents', 'pred_original'\], each of shape \(2, 4, 16, 16\); got keys"),
    ]:
        with pytest.raises(ValueError, match=message):
            env.step(action)
    env.step({"next_latents": good, "pred_original": good})  # refused actions left the episode where it was
    _, rewards, terminated, _, _ = env.step({"next_latents": good, "pred_original": good})
    assert terminated.all() and torch.isfinite(rewards).all()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_step_refuses_integer_and_bool_tensors_as_it_refuses_integer_arrays(dtype):
    # An integer latent is no state of the chain: scored, it would be an image outside the declared Box of floats.
    env = make_env("lcm", 2, tiny("lcm"), jpeg_incompressibility, num_steps=2)
    obs, _ = env.reset(seed=0, options={"prompts": ["a", "b"]})
    good = torch.zeros_like(obs["latents"])
    shape = tuple(good.shape)
    for value, got in [
        (torch.ones(shape, dtype=dtype), f"a {dtype} tensor of shape {shape}"),
        (np.ones(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype), "array of shape"),
    ]:
        with pytest.raises(ValueError) as info:
            env.step({"next_latents": value, "pred_original": good})
        message = str(info.value)
        assert "\n" not in message and message.startswith(
            f"step: action['next_latents'] must be a float tensor or float numpy array of shape {shape}, got "
        )
        assert got in message, message
    env.step({"next_latents": good, "pred_original": good})  # refused actions left the episode where it was
    _, rewards, terminated, _, _ = env.step({"next_latents": good, "pred_original": good})
    assert terminated.all() and torch.isfinite(rewards).all()


# --------------------------------------------------------------------------------------------------
# The factory
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipes():
    """The tiny pipelines, loaded once; the tests below build envs and policies on them but never change them."""
    return {"lcm": tiny("lcm"), "ddpm": tiny("ddpm")}


def _with_scheduler(pipe, scheduler):
    """``pipe`` with another scheduler, leaving the shared pipeline as it is."""
    return SimpleNamespace(**{**pipe.components, "scheduler": scheduler})


@pytest.mark.parametrize(
    ("kind", "sampler", "adapter", "env_id"),
    [("lcm", "lcm", "lcm", "genrl/LCM-v0"), ("ddpm", "ddim", "sd", "genrl/DDPM-v0")],
)
def test_make_env_goes_through_gymnasium_and_returns_the_env_itself(pipes, kind, sampler, adapter, env_id):
    env = make_env(kind, 2, pipes[kind], jpeg_incompressibility, num_steps=3)
    assert type(env) is DenoisingEnv and env.unwrapped is env  # make_vec wrapped nothing
    assert env.sampler.name == sampler and env.adapter.name == adapter
    assert env.spec.id == env_id and env.spec.kwargs["num_steps"] == 3
    assert env.num_envs == 2 and env.num_steps == 3 and env.latent_shape == (4, 16, 16)
    assert env.encode_prompts(["a cat"]).shape == (1, *env.single_observation_space["prompt_embeds"].shape)


def test_make_env_rejects_what_does_not_go_together(pipes):
    with pytest.raises(ValueError, match="env kind"):
        make_env("ddim", 2, pipes["ddpm"], None, num_steps=3)
    with pytest.raises(ValueError, match="noise_last_step is a setting of the lcm sampler, not of ddim"):
        make_env("ddpm", 2, pipes["ddpm"], None, num_steps=3, noise_last_step=True)
    with pytest.raises(ValueError, match="the lcm sampler needs a latent consistency model"):
        make_env("ddpm", 2, pipes["ddpm"], None, num_steps=3, sampler="lcm")
    with pytest.raises(ValueError, match="resolution 60"):
        make_env("lcm", 2, pipes["lcm"], None, num_steps=3, resolution=60)


# --------------------------------------------------------------------------------------------------
# The declared spaces hold what reset and step return, on every step and after the last
# --------------------------------------------------------------------------------------------------
def _numpy(tensors: dict) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


def _row(arrays: dict, i: int) -> dict:
    return {k: np.asarray(v[i]) for k, v in arrays.items()}


def _outside(space: gym.spaces.Dict, arrays: dict) -> list[str]:
    """The keys where ``arrays`` and ``space`` disagree (missing, extra, or not contained), for the message."""
    keys = set(space.spaces) ^ set(arrays)
    return sorted(keys | {k for k in set(space.spaces) & set(arrays) if not space[k].contains(arrays[k])})


def _assert_in_spaces(env, obs: dict, action: dict | None = None) -> None:
    pairs = [(obs, env.observation_space, env.single_observation_space)]
    if action is not None:
        pairs.append((action, env.action_space, env.single_action_space))
    for tensors, batch_space, single_space in pairs:
        arrays = _numpy(tensors)
        assert batch_space.contains(arrays), _outside(batch_space, arrays)
        for i in range(env.num_envs):
            assert single_space.contains(_row(arrays, i)), (i, _outside(single_space, _row(arrays, i)))


@pytest.mark.parametrize(
    ("kind", "options", "scheduler_overrides"),
    [
        ("lcm", {}, {}),
        ("lcm", {"noise_last_step": True}, {}),
        ("ddpm", {}, {}),
        ("ddpm", {}, {"steps_offset": 0}),  # ends on t = 0: its last step goes to -1, past timestep 0
    ],
)
def test_spaces_hold_every_observation_and_action_of_an_episode(pipes, kind, options, scheduler_overrides):
    pipe = pipes[kind]
    if scheduler_overrides:
        pipe = _with_scheduler(pipe, type(pipe.scheduler).from_config(pipe.scheduler.config, **scheduler_overrides))
    env = make_env(kind, 3, pipe, jpeg_incompressibility, num_steps=3, **options)
    policy = policy_for(kind, pipe, guidance_scale=5.0, reduction="mean")
    generator = torch.Generator().manual_seed(0)

    obs, _ = env.reset(seed=0, options={"prompts": PROMPTS})
    _assert_in_spaces(env, obs)
    seen = []
    for _ in range(env.num_steps):
        action, _ = policy.act(obs, generator)
        _assert_in_spaces(env, obs, action)
        seen.append((int(obs["timestep"][0]), int(obs["next_timestep"][0]), bool(obs["stochastic"][0])))
        obs, _, terminated, _, _ = env.step(action)
        _assert_in_spaces(env, obs)
    assert terminated.all()
    assert seen == list(zip(env.timesteps, env.next_timesteps, env.stochastic))
    # After the last step: the final latents, at the schedule's end, with no step left.
    assert torch.equal(obs["latents"], action["next_latents"])
    assert obs["timestep"].tolist() == obs["next_timestep"].tolist() == [env.next_timesteps[-1]] * 3
    assert not obs["stochastic"].any()
    if scheduler_overrides:
        assert env.next_timesteps[-1] == -1


def test_spaces_declare_the_dtypes_of_the_tensors(pipes):
    env = make_env("ddpm", 2, pipes["ddpm"], None, num_steps=2)
    obs, act = env.single_observation_space, env.single_action_space
    assert obs["latents"].dtype == obs["prompt_embeds"].dtype == act["next_latents"].dtype == np.float32
    assert obs["timestep"].dtype == obs["next_timestep"].dtype == np.int64
    assert obs["stochastic"].dtype == np.bool_
    assert obs["prompt_embeds"].shape == obs["negative_prompt_embeds"].shape == env.encode_prompts([""]).shape[1:]
    assert env.observation_space["latents"].shape == env.action_space["pred_original"].shape == (2, 4, 16, 16)


# --------------------------------------------------------------------------------------------------
# The reward: scored in step, or left to the caller
# --------------------------------------------------------------------------------------------------
def _episode(env, policy, seed: int = 0):
    obs, _ = env.reset(seed=seed, options={"prompts": PROMPTS})
    generator = torch.Generator().manual_seed(seed)
    infos, rewards = [], []
    for _ in range(env.num_steps):
        action, _ = policy.act(obs, generator)
        obs, reward, _, _, info = env.step(action)
        infos.append(info)
        rewards.append(reward)
    return rewards, infos


@pytest.mark.parametrize("kind", ["lcm", "ddpm"])
def test_without_a_reward_fn_the_last_step_leaves_the_images_to_the_caller(pipes, kind):
    policy = policy_for(kind, pipes[kind], guidance_scale=5.0, reduction="mean")
    scored_rewards, scored_infos = _episode(make_env(kind, 3, pipes[kind], jpeg_incompressibility, 3), policy)
    rewards, infos = _episode(make_env(kind, 3, pipes[kind], None, 3), policy)

    assert all(info == {} for info in scored_infos[:-1] + infos[:-1])
    assert all((r == 0).all() for r in scored_rewards[:-1] + rewards[:-1])
    assert set(scored_infos[-1]) == {"images", "reward_parts", "reward_time_s"}
    assert set(infos[-1]) == {"images"}
    assert torch.isnan(rewards[-1]).all() and rewards[-1].shape == (3,)
    # The same images; scored by the caller, they get the env's own rewards.
    assert torch.equal(infos[-1]["images"], scored_infos[-1]["images"])
    caller_scored = CheckedReward(jpeg_incompressibility, "jpeg").score(infos[-1]["images"], PROMPTS, [{}] * 3)[0]
    assert torch.equal(caller_scored, scored_rewards[-1])


class _MetadataReward:
    """A reward that reads each image's metadata, as a prompt-alignment reward would."""

    def __call__(self, images, prompts, metadata):
        return images.mean(dim=(1, 2, 3)) + torch.tensor([m["bonus"] for m in metadata])


def test_in_step_and_background_scoring_agree_and_both_see_the_prompt_metadata(pipes):
    policy = policy_for("lcm", pipes["lcm"], guidance_scale=5.0, reduction="mean")
    reward = CheckedReward(_MetadataReward(), "metadata")
    batch = SamplingBatch(PROMPTS, noise_seed=1, step_seed=2, metadata=[{"bonus": 10.0 * i} for i in range(3)])
    in_step = collect(make_env("lcm", 3, pipes["lcm"], reward, 2), policy, batch)
    with ThreadPoolExecutor(1) as executor:
        env = make_env("lcm", 3, pipes["lcm"], None, 2)
        background = collect(env, policy, batch, background_reward=(reward, executor))
        env.reset(seed=0, options={"prompts": ["other"] * 3})  # the next batch may reset before the reward runs
        background.resolve()
    assert torch.equal(in_step.rewards, background.rewards)
    expected = in_step.images.mean(dim=(1, 2, 3)) + torch.tensor([0.0, 10.0, 20.0])
    torch.testing.assert_close(in_step.rewards, expected)
    with pytest.raises(ValueError, match="3 dicts, one per prompt"):
        env.reset(options={"prompts": PROMPTS, "metadata": [{}]})


# --------------------------------------------------------------------------------------------------
# Timestep schedules: the schedulers' own set_timesteps, the same as the formulas genrl used before
# --------------------------------------------------------------------------------------------------
# The schedules genrl computed by hand before it called set_timesteps (genrl.steps.lcm_timesteps and
# ddim_timesteps, "leading" spacing and steps_offset 1), for the configs below.
LCM_SCHEDULES = {
    1: [999],
    2: [999, 499],
    3: [999, 679, 339],
    4: [999, 759, 499, 259],
    5: [999, 799, 599, 399, 199],
    6: [999, 839, 679, 499, 339, 179],
    8: [999, 879, 759, 639, 499, 379, 259, 139],
    16: [999, 939, 879, 819, 759, 699, 639, 579, 499, 439, 379, 319, 259, 199, 139, 79],
    50: list(range(999, 0, -20)),
}
DDIM_SCHEDULES = {
    1: [1],
    2: [501, 1],
    3: [667, 334, 1],
    4: [751, 501, 251, 1],
    5: [801, 601, 401, 201, 1],
    7: [853, 711, 569, 427, 285, 143, 1],
    10: list(range(901, 0, -100)),
    20: list(range(951, 0, -50)),
    50: list(range(981, 0, -20)),
}
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
# The paper models' scheduler_config.json, the keys that matter here: SD 1.5 (a PNDMScheduler config with no
# timestep_spacing, so DDIM's default "leading") and SimianLuo/LCM_Dreamshaper_v7.
SD15_SCHEDULER = dict(
    SD_BETAS, _class_name="PNDMScheduler", set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1
)
LCM_DREAMSHAPER_SCHEDULER = dict(
    SD_BETAS,
    _class_name="LCMScheduler",
    original_inference_steps=50,
    set_alpha_to_one=True,
    steps_offset=1,
    timestep_spacing="leading",
    timestep_scaling=10.0,
)


@pytest.mark.parametrize("config", ["tiny", "paper"])
@pytest.mark.parametrize("kind", ["lcm", "ddpm"])
def test_schedules_are_the_ones_genrl_computed_before(pipes, kind, config):
    pipe = pipes[kind]
    if config == "paper":  # as load_pipeline converts it
        paper = LCM_DREAMSHAPER_SCHEDULER if kind == "lcm" else SD15_SCHEDULER
        scheduler_cls = LCMScheduler if kind == "lcm" else DDIMScheduler
        pipe = _with_scheduler(pipe, scheduler_cls.from_config(paper, clip_sample=False, thresholding=False))
    expected = LCM_SCHEDULES if kind == "lcm" else DDIM_SCHEDULES
    for num_steps, timesteps in expected.items():
        assert make_env(kind, 1, pipe, None, num_steps).timesteps == timesteps, num_steps


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_ddpm_schedule_follows_the_schedulers_timestep_spacing(pipes, spacing):
    scheduler = DDIMScheduler.from_config(pipes["ddpm"].scheduler.config, timestep_spacing=spacing)
    env = make_env("ddpm", 1, _with_scheduler(pipes["ddpm"], scheduler), None, num_steps=4)
    scheduler.set_timesteps(4)
    assert env.timesteps == scheduler.timesteps.tolist() != DDIM_SCHEDULES[4]


@pytest.mark.parametrize("kind", ["lcm", "ddpm"])
def test_building_an_env_leaves_the_pipelines_scheduler_as_it_was(pipes, kind):
    scheduler = pipes[kind].scheduler
    before = (scheduler.num_inference_steps, scheduler.timesteps.clone(), dict(scheduler.config))
    make_env(kind, 1, pipes[kind], None, num_steps=4)
    assert scheduler.num_inference_steps == before[0] and torch.equal(scheduler.timesteps, before[1])
    assert dict(scheduler.config) == before[2]


def test_impossible_horizons_are_clear_errors(pipes):
    for num_steps in (0, 51):
        with pytest.raises(ValueError, match="LCM horizon must be between 1 and 50"):
            make_env("lcm", 1, pipes["lcm"], None, num_steps)
    with pytest.raises(ValueError, match="DDIM steps must be between 1 and 1000"):
        make_env("ddpm", 1, pipes["ddpm"], None, 0)
    with pytest.raises(ValueError, match="leaves the model's timesteps 0 to 999"):  # "leading" + offset 1: t = 1000
        make_env("ddpm", 1, pipes["ddpm"], None, 1000)
    with pytest.raises(ValueError, match="no stochastic step"):
        ends_on_0 = DDIMScheduler.from_config(pipes["ddpm"].scheduler.config, steps_offset=0)
        make_env("ddpm", 1, _with_scheduler(pipes["ddpm"], ends_on_0), None, 1)

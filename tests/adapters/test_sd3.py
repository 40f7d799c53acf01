"""The flow family on the tiny Stable Diffusion 3: its env and policy against diffusers' own SD3 pipeline, its
log-probs against torch.distributions, ``gymnasium.make("genrl/FLOW-v0")``, and a training run whose LoRA plain
diffusers loads."""

import contextlib
import logging
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from gymnasium.utils.env_checker import check_env
from safetensors.torch import load_file

from genrl.adapters.base import pack_text, unpack_text
from genrl.adapters.sd3 import FLOW_GRPO_LORA_TARGETS
from genrl.config import TrainConfig
from genrl.envs import DenoisingEnv, make_env
from genrl.errors import GenrlError
from genrl.models import load_pipeline
from genrl.policy import DenoisingPolicy, add_lora
from genrl.shapes import shipped_dir
from genrl.shapes.tiny import tiny_model_dir
from genrl.train import main
from tests.helpers import expect_error, fast_args, logged_metrics, policy_for

PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def pipe():
    """The tiny SD3 as ``--model tiny --env flow`` loads it; the tests below never change it."""
    return load_pipeline("tiny", "flow")


def _plain_pipeline(model: str = "tiny") -> StableDiffusion3Pipeline:
    """``--model tiny`` or ``shapes`` (the shipped flow model) for ``--env flow``, loaded by plain diffusers."""
    folder = tiny_model_dir("tiny-sd3") if model == "tiny" else shipped_dir() / "flow"
    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _rollout(env: DenoisingEnv, policy: DenoisingPolicy, seed: int = 0):
    """One episode of ``env`` under ``policy``: the first observation, each step's (observation, action, log-prob),
    and the last step's info."""
    obs, _ = env.reset(seed=seed, options={"prompts": PROMPTS})
    first, steps, generator = obs, [], torch.Generator().manual_seed(seed)
    for _ in range(env.num_steps):
        action, log_prob = policy.act(obs, generator)
        steps.append((obs, action, log_prob))
        obs, rewards, terminated, _, info = env.step(action)
    assert bool(terminated.all())
    return first, steps, info


def test_the_tiny_sd3_is_a_plain_diffusers_folder_that_samples():
    pipe = _plain_pipeline()  # no arguments: every part, T5 included, is in the folder
    assert pipe.text_encoder_3 is not None and pipe.vae.config.latent_channels == 16
    images = pipe(PROMPTS, num_inference_steps=2, guidance_scale=5.0, output_type="pt").images
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()


def test_the_mean_rollout_is_the_sd3_pipelines_own_sampling(pipe):
    """With noise level 0 the policy's step is the scheduler's Euler step: the env, the policy and its guidance
    sample what ``StableDiffusion3Pipeline`` samples from the same initial latents."""
    env = make_env("flow", 2, pipe, None, num_steps=4)
    policy = policy_for("flow", pipe, guidance_scale=5.0, reduction="mean", noise_level=0.0)
    first, steps, info = _rollout(env, policy)
    sigmas = [float(obs["timestep"][0]) for obs, _, _ in steps]
    plain = _plain_pipeline()
    plain.scheduler.set_timesteps(4)
    assert sigmas == plain.scheduler.sigmas[:-1].tolist()
    latents = plain(
        PROMPTS, num_inference_steps=4, guidance_scale=5.0, latents=first["latents"].clone(), output_type="latent"
    ).images
    torch.testing.assert_close(steps[-1][1]["next_latents"], latents, rtol=0, atol=1e-5)
    with torch.no_grad():  # the pipeline's own decode, as its __call__ runs it after the loop
        decoded = plain.vae.decode(latents / plain.vae.config.scaling_factor + plain.vae.config.shift_factor).sample
    torch.testing.assert_close(info["images"], plain.image_processor.postprocess(decoded, "pt"), rtol=0, atol=1e-5)


@pytest.mark.parametrize("noise_mode", ["flow_grpo", "constant"])
def test_the_log_prob_of_the_envs_own_steps_is_torch_distributions(pipe, noise_mode):
    env = make_env("flow", 2, pipe, None, num_steps=3)
    policy = policy_for("flow", pipe, guidance_scale=5.0, reduction="mean", noise_level=0.7, noise_mode=noise_mode)
    _, steps, _ = _rollout(env, policy, seed=1)
    with torch.no_grad():
        for obs, action, sampled_log_prob in steps:
            dist = policy.distribution(obs)
            assert (dist.std > 0).all()  # every step, the last to sigma = 0 too, is stochastic
            ours = policy.action_log_prob(dist, action["next_latents"])
            normal = torch.distributions.Normal(dist.mean, dist.std.expand_as(dist.mean))
            expected = normal.log_prob(action["next_latents"]).flatten(1).mean(1)
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(sampled_log_prob, expected, rtol=1e-5, atol=1e-5)


def test_outside_the_sde_window_a_step_is_the_odes_euler_step(pipe):
    """``sde_window=(1, 3)`` of 4 steps: steps 1 and 2 are the SDE's, stochastic and trained; steps 0 and 3 are the
    scheduler's deterministic Euler step, whatever the noise level, so the rollout's first and last transitions
    equal those of the noise-free policy from the same latents."""
    env = make_env("flow", 2, pipe, None, num_steps=4, sde_window=(1, 3))
    assert env.stochastic == [False, True, True, False]
    noisy = policy_for("flow", pipe, guidance_scale=5.0, reduction="mean", noise_level=0.7)
    ode = policy_for("flow", pipe, guidance_scale=5.0, reduction="mean", noise_level=0.0)
    _, steps, _ = _rollout(env, noisy, seed=2)
    with torch.no_grad():
        for index, (obs, action, _) in enumerate(steps):
            dist = noisy.distribution(obs)
            if index in (0, 3):
                assert (dist.std == 0).all()
                assert torch.equal(action["next_latents"], ode.distribution(obs).mean)
            else:
                assert (dist.std > 0).all() and not torch.equal(action["next_latents"], dist.mean)


def test_the_sde_window_is_a_setting_of_the_samplers_that_can_take_it(pipe, tmp_path):
    with pytest.raises(ValueError, match="2 5 is not a window of the 4 steps"):
        make_env("flow", 2, pipe, None, num_steps=4, sde_window=(2, 5))
    with pytest.raises(GenrlError, match="3 3 is not a window of the 4 steps"):
        TrainConfig(env="flow", num_steps=4, sde_window=(3, 3)).validate()
    with pytest.raises(GenrlError, match="--sde-window is a setting of the ddim, flow_sde and cps samplers"):
        TrainConfig(env="lcm", sde_window=(0, 2)).validate()
    with pytest.raises(ValueError, match="sde_window is a setting of the ddim, flow_sde and cps samplers, not of lcm"):
        make_env("lcm", 2, load_pipeline("tiny", "lcm"), None, num_steps=2, sde_window=(0, 1))


def test_the_text_conditioning_packs_and_unpacks_exactly():
    embeds, pooled = torch.randn(3, 5, 8), torch.randn(3, 6)
    packed = pack_text(embeds, pooled)
    assert packed.shape == (3, 6, 8) and (packed[:, -1, 6:] == 0).all()
    back_embeds, back_pooled = unpack_text(packed, 6)
    assert torch.equal(back_embeds, embeds) and torch.equal(back_pooled, pooled)


def test_make_gives_a_flow_env_stepped_by_hand_with_sampled_actions(pipe):
    env = gym.make("genrl/FLOW-v0", pipeline=pipe, num_steps=2)
    obs, info = env.reset(seed=0)
    assert obs in env.observation_space and isinstance(info["prompt"], str)
    assert obs["timestep"].dtype == np.float32 and obs["timestep"] == 1.0
    env.action_space.seed(0)
    rewards, terminated = [], False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs in env.observation_space and truncated is False
        rewards.append(reward)
    assert rewards[0] == 0.0 and math.isfinite(rewards[-1]) and rewards[-1] != 0
    assert info["images"].shape == (3, 64, 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    # As on the UNet envs: latents and text embeddings are unbounded, and that is the only complaint.
    assert all("infinity" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_flow_configuration_and_model_checks(tmp_path, monkeypatch):
    with pytest.raises(GenrlError, match="deterministic Euler step"):
        TrainConfig(env="flow", noise_level=0.0).validate()
    with pytest.raises(GenrlError, match="--noise-last-step is a setting of the lcm sampler"):
        TrainConfig(env="flow", noise_last_step=True).validate()
    monkeypatch.setattr("genrl.models.shipped_dir", lambda: tmp_path)  # shapes weights without the flow model
    with pytest.raises(GenrlError, match="shapes flow model has not been trained yet.*pretrain flow"):
        load_pipeline("shapes", "flow")
    with pytest.raises(GenrlError, match="sd adapter.*the flow_sde sampler needs a flow-matching model"):
        load_pipeline(str(tiny_model_dir("tiny-sd")), "flow")  # a UNet model


@pytest.mark.parametrize("level", [1.5, 1e6])
def test_a_noise_level_that_flips_the_latent_is_refused_naming_it(tmp_path, capsys, level):
    # 1e6 used to sample NaN latents in the first epoch, refused as a divergence blamed on --learning-rate.
    with pytest.raises(GenrlError, match=f"--noise-level {level} is too large"):
        TrainConfig(env="flow", noise_level=level).validate()
    argv = fast_args(tmp_path, "r", "--env", "flow", "--model", "tiny", "--noise-level", str(level))
    line = expect_error(capsys, argv, f"--noise-level {level} is too large")
    assert "learning-rate" not in line and "under 1.41" in line
    assert not (tmp_path / "r").exists()
    TrainConfig(env="flow", noise_level=1.4).validate()  # large, but the step still keeps the latent


@pytest.mark.parametrize("resolution", [72, 128, 4096])
def test_a_resolution_past_the_position_embedding_is_one_line_before_the_run_folder(pipe, tmp_path, capsys, resolution):
    # The tiny SD3 embeds positions of at most 8 x 8 patches of 2 x 2 latent pixels, each 4 x 4 image pixels: 72 px
    # passed the multiple-of-8 check, then diffusers raised in the first forward pass, the run folder made by then.
    config = pipe.transformer.config
    assert config.pos_embed_max_size * config.patch_size * 4 == 64
    largest = "at most 64 px for this model"
    with pytest.raises(ValueError, match=f"resolution {resolution} is over the .* {largest}"):
        make_env("flow", 1, pipe, None, 2, resolution)
    argv = fast_args(tmp_path, "r", "--env", "flow", "--model", "tiny", "--resolution", str(resolution))
    line = expect_error(capsys, argv, f"--model tiny: resolution {resolution} is over the")
    assert largest in line and line.endswith("pass a resolution up to 64, a multiple of 8")
    assert not (tmp_path / "r").exists()
    make_env("flow", 1, pipe, None, 2, 56)  # under the cap, a multiple of 8 still passes


@pytest.mark.parametrize("model", ["tiny", "shapes"])
def test_flow_training_exports_a_lora_that_plain_sd3_loads(tmp_path, model):
    rank, alpha = 4, 8.0  # alpha != rank: diffusers must get the scale too
    lora = ["--finetune", "lora", "--lora-rank", str(rank), "--lora-alpha", str(alpha), "--learning-rate", "0.05"]
    lora += ["--lora-target-modules", *FLOW_GRPO_LORA_TARGETS]  # both streams: the text's add_* layers export too
    model_args = ["--model", model] + (["--prompts", "shapes_train"] if model == "shapes" else [])
    main(fast_args(tmp_path, "flow", "--env", "flow", *model_args, "--num-steps", "2", *lora))
    # Training recomputes the sampling log-probs: ratio 1, up to the rounding of other batch sizes, which the last
    # step's small std (about 0.002 on 2 steps) magnifies more than the UNet families' (tests/test_train.py: 1e-6).
    for m in logged_metrics(tmp_path / "flow"):
        assert abs(m["ratio_mean_first_minibatch"] - 1) < 1e-4
    ckpt = tmp_path / "flow" / "checkpoints" / "latest"

    loaded = _plain_pipeline(model)
    loaded.load_lora_weights(ckpt)
    ours = _plain_pipeline(model).transformer.requires_grad_(False)
    add_lora(ours, rank, alpha, FLOW_GRPO_LORA_TARGETS)
    _, unexpected = ours.load_state_dict(load_file(ckpt / "trainable.safetensors"), strict=False)
    assert not unexpected
    base = _plain_pipeline(model).transformer

    config = base.config
    inputs = dict(
        hidden_states=torch.randn(2, config.in_channels, config.sample_size, config.sample_size),
        timestep=torch.tensor([1000.0, 500.0]),
        encoder_hidden_states=torch.randn(2, 7, config.joint_attention_dim),
        pooled_projections=torch.randn(2, config.pooled_projection_dim),
    )
    with torch.no_grad():
        from_diffusers = loaded.transformer(**inputs).sample
        expected = ours(**inputs).sample
        untouched = base(**inputs).sample
    torch.testing.assert_close(from_diffusers, expected, rtol=1e-5, atol=1e-6)
    assert (from_diffusers - untouched).abs().max() > 1e-5


def test_the_shapes_models_one_t5_token_cuts_prompts_without_a_warning():
    """Its T5 takes one token by design, so the pipeline's truncation warning (every cut-off part of every prompt) is
    kept out of a run's log; a pipeline of diffusers' 256 tokens keeps it for prompts that are too long."""
    prompts = ["two red circles on a blue background"] * 2
    with _logged(StableDiffusion3Pipeline.__module__) as messages:
        make_env("flow", 2, load_pipeline("shapes", "flow"), None, num_steps=2).encode_prompts(prompts)
        assert not messages
        _plain_pipeline("shapes").encode_prompt(
            prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=1
        )
        assert "truncated" in messages[0]  # so the check above could fail


@contextlib.contextmanager
def _logged(logger_name: str):
    """The messages the logger ``logger_name`` records while the block runs."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def test_loading_an_sd3_model_passes_no_argument_it_does_not_take():
    """SD 1.x's safety checker is switched off by an argument that an SD3 pipeline does not take, and diffusers warns
    about it on every load."""
    from diffusers import DiffusionPipeline
    from diffusers.pipelines import pipeline_utils

    with _logged(pipeline_utils.__name__) as messages:
        load_pipeline("tiny", "flow")
        assert not [m for m in messages if "not expected" in m]
        DiffusionPipeline.from_pretrained(tiny_model_dir("tiny-sd3"), safety_checker=None)
        assert any("not expected" in m for m in messages)  # so the check above could fail


def test_a_hub_id_not_in_the_cache_is_one_error_without_a_warning(tmp_path, monkeypatch):
    """Whether a hub pipeline has a safety checker is read from the cache, never by a download attempt (which would
    print the hub library's warnings before genrl's one line)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(GenrlError, match="not in the local cache"):
            load_pipeline("someone/not-cached", "flow")
    assert not [str(w.message) for w in caught if "huggingface_hub" in w.filename], [str(w.message) for w in caught]

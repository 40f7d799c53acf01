"""The flux adapter on the tiny FLUX.1 [dev]: its packing, text, schedule and flow ODE against diffusers' own
``FluxPipeline``, and a ``--model tiny-flux --env flow`` training run whose LoRA plain diffusers loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file

from genrl.adapters import adapter_for
from genrl.adapters.flux import FluxAdapter, image_ids, pack_latents, unpack_latents
from genrl.config import DEFAULT_LORA_TARGETS
from genrl.envs import make_env
from genrl.models import load_pipeline
from genrl.policy import add_lora, make_policy
from genrl.shapes.tiny import FLUX_T5_TOKENS, tiny_model_dir
from genrl.train import main

PROMPTS = ["a red circle", "two blue squares"]
RESOLUTION = 64  # FluxPipeline's default for the tiny model would be 128 * 4 = 512 px
STEPS = 4
GUIDANCE = 3.5


@pytest.fixture(scope="module")
def pipe():
    """The tiny FLUX as ``--model tiny-flux --env flow`` loads it; the tests never change it."""
    return load_pipeline("tiny-flux", "flow")


def _plain() -> FluxPipeline:
    plain = FluxPipeline.from_pretrained(tiny_model_dir("tiny-flux"))
    plain.set_progress_bar_config(disable=True)
    return plain


def test_the_latents_stay_unpacked_and_pack_as_the_pipelines():
    adapter = FluxAdapter(_plain())
    # 16 VAE channels (64 packed), a 2 x 2 packing on a 4x VAE, FluxPipeline's hard-coded 128-latent default.
    assert adapter.latent_channels == 16 and adapter.latent_multiple() == 2
    assert adapter.default_resolution() == 512 and adapter.init_noise_sigma() == 1.0
    latents = torch.randn(2, 16, 16, 16)
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 16, 16))
    assert torch.equal(unpack_latents(packed, 16, 16), latents)
    assert torch.equal(unpack_latents(packed, 16, 16), FluxPipeline._unpack_latents(packed, RESOLUTION, RESOLUTION, 4))
    ids = FluxPipeline._prepare_latent_image_ids(2, 8, 8, torch.device("cpu"), torch.float32)
    assert torch.equal(image_ids(8, 8, torch.device("cpu"), torch.float32), ids)


def test_the_adapter_encodes_text_as_the_pipeline_does(pipe):
    adapter = adapter_for(pipe)
    assert isinstance(adapter, FluxAdapter) and adapter.model_kind == "flow" and adapter.embedded_guidance
    # The tiny T5 tokenizer takes 32 tokens of 64 channels; CLIP's pooled output (32 wide) is the last row.
    assert adapter.text_shape() == (FLUX_T5_TOKENS + 1, 64)
    text = adapter.encode_prompts(PROMPTS)
    with torch.no_grad():  # as the pipeline's __call__ runs it (with grad on, T5's attention rounds differently)
        embeds, pooled, _ = _plain().encode_prompt(PROMPTS, max_sequence_length=FLUX_T5_TOKENS)
    assert torch.equal(text[:, :-1], embeds)
    assert torch.equal(text[:, -1, :32], pooled) and not text[:, -1, 32:].any()


def test_the_schedule_and_the_transformers_timestep_are_the_pipelines(pipe):
    """The sigmas are FluxPipeline's (linspace(1, 1/N, N), shifted by the mu of 64 packed tokens), and the
    transformer gets the pipeline's timestep / 1000 bit for bit: sigma * 1000 / 1000 in float32, not sigma."""
    env = make_env("flow", 2, pipe, None, num_steps=STEPS, resolution=RESOLUTION)
    plain = _plain()
    plain(
        PROMPTS[:1],
        num_inference_steps=STEPS,
        height=RESOLUTION,
        width=RESOLUTION,
        max_sequence_length=FLUX_T5_TOKENS,
        output_type="latent",
    )
    sigmas = plain.scheduler.sigmas.tolist()
    assert env.timesteps == sigmas[:-1] and env.next_timesteps == sigmas[1:]
    adapter = adapter_for(pipe)
    ours = adapter.timestep(torch.tensor(env.timesteps), torch.float32)
    assert torch.equal(ours, plain.scheduler.timesteps / 1000)
    # Why it is computed so: some float32 sigmas do not come back from * 1000 / 1000 (5 of these 99).
    sigma = torch.linspace(0.01, 0.99, 99)
    assert not torch.equal(adapter.timestep(sigma, torch.float32), sigma)


def test_the_deterministic_flow_chain_is_the_flux_pipelines_own_sampling(pipe):
    """With noise level 0 the flow_sde step is diffusers' Euler step x + (sigma_next - sigma) v bit for bit, so
    genrl's env stepped with its policy's mean (std 0) runs FluxPipeline's ODE: the same packed noise, the same
    sigmas, one transformer pass a step with the guidance embedded. Exact (``torch.equal``) at every step: packing
    only moves values, and the transformer sees the same inputs."""
    env = make_env("flow", 2, pipe, None, num_steps=STEPS, resolution=RESOLUTION, noise_level=0.0)
    policy = make_policy(env, guidance_scale=GUIDANCE)
    obs, _ = env.reset(seed=0, options={"prompts": PROMPTS})
    assert obs["latents"].shape == (2, 16, 16, 16)
    noise = obs["latents"].clone()
    generator = torch.Generator().manual_seed(0)
    ours = []
    for _ in range(env.num_steps):
        action, _ = policy.act(obs, generator)
        ours.append(action["next_latents"])
        obs, _, terminated, _, info = env.step(action)
    assert bool(terminated.all())

    plain = _plain()
    theirs = []

    def record(_pipe, _i, _t, tensors):
        theirs.append(tensors["latents"].clone())
        return tensors

    latents = plain(
        PROMPTS,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=RESOLUTION,
        width=RESOLUTION,
        max_sequence_length=FLUX_T5_TOKENS,  # genrl's: the tiny T5 tokenizer's length
        latents=pack_latents(noise),
        output_type="latent",
        callback_on_step_end=record,
    ).images
    assert len(theirs) == len(ours) == STEPS
    for step, (mine, pipeline_latents) in enumerate(zip(ours, theirs)):
        assert torch.equal(pack_latents(mine), pipeline_latents), step
    assert torch.equal(pack_latents(ours[-1]), latents)
    with torch.no_grad():  # the pipeline's own decode, as its __call__ runs it after the loop
        unpacked = FluxPipeline._unpack_latents(latents, RESOLUTION, RESOLUTION, plain.vae_scale_factor)
        config = plain.vae.config
        decoded = plain.vae.decode(unpacked / config.scaling_factor + config.shift_factor).sample
    assert torch.equal(info["images"], plain.image_processor.postprocess(decoded, "pt"))


def _train(tmp_path: Path, name: str, *extra: str) -> Path:
    """A two-epoch PPO run of ``extra``'s model and env at 64 px, batches of 2, two steps; its folder."""
    main(
        [
            "--preset",
            "tiny-compression",
            "--epochs",
            "2",
            "--sample-batch-size",
            "2",
            "--batches-per-epoch",
            "1",
            "--num-steps",
            "2",
            "--resolution",
            str(RESOLUTION),
            "--eval-every",
            "0",
            "--stat-min-count",
            "2",
            "--algo",
            "ppo",
            "--ppo.train-batch-size",
            "2",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            name,
            *extra,
        ]
    )
    return tmp_path / name


def test_flow_training_exports_a_lora_that_plain_flux_loads(tmp_path):
    rank, alpha = 4, 8.0  # alpha != rank: diffusers must get the scale too
    lora = ["--finetune", "lora", "--lora-rank", str(rank), "--lora-alpha", str(alpha), "--learning-rate", "0.05"]
    run = _train(tmp_path, "flux", "--model", "tiny-flux", "--env", "flow", *lora)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:  # as tests/adapters/test_sd3.py: the last flow step's small std magnifies rounding
        assert abs(m["ratio_mean_first_minibatch"] - 1) < 1e-4
    ckpt = run / "checkpoints" / "latest"

    loaded = _plain()
    loaded.load_lora_weights(ckpt)
    ours = _plain()  # the trained denoiser, rebuilt as genrl trains it: the LoRA added, its trained tensors loaded
    add_lora(ours.transformer, rank, alpha, DEFAULT_LORA_TARGETS)
    _, unexpected = ours.transformer.load_state_dict(load_file(ckpt / "trainable.safetensors"), strict=False)
    assert not unexpected
    base = _plain()

    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 16, 16, 16, generator=generator)
    text = torch.randn(2, FLUX_T5_TOKENS + 1, 64, generator=generator)
    sigma = torch.tensor([1.0, 0.5])
    with torch.no_grad():
        from_diffusers = FluxAdapter(loaded).predict(latents, sigma, text, GUIDANCE)
        expected = FluxAdapter(ours).predict(latents, sigma, text, GUIDANCE)
        untouched = FluxAdapter(base).predict(latents, sigma, text, GUIDANCE)
    # The same LoRA weights at the same scale alpha / rank on the same layers: diffusers' PEFT layers compute what
    # genrl's do.
    torch.testing.assert_close(from_diffusers, expected, rtol=0, atol=1e-6)
    assert (from_diffusers - untouched).abs().max() > 1e-5

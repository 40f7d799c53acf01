"""The sdxl adapter on the tiny SDXL: its text, denoiser call and DDIM chain against diffusers' own
``StableDiffusionXLPipeline``, and a ``--model tiny-sdxl --env ddpm`` training run whose LoRA plain diffusers loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline
from safetensors.torch import load_file

from genrl.adapters import adapter_for
from genrl.adapters.sdxl import SDXLAdapter
from genrl.config import DEFAULT_LORA_TARGETS
from genrl.envs import make_env
from genrl.models import load_pipeline
from genrl.policy import add_lora, make_policy
from genrl.shapes.tiny import tiny_model_dir
from genrl.train import main

PROMPTS = ["a red circle", "two blue squares"]
RESOLUTION = 64
STEPS = 4
GUIDANCE = 5.0


@pytest.fixture(scope="module")
def pipe():
    """The tiny SDXL as ``--model tiny-sdxl --env ddpm`` loads it (DDIM scheduler); the tests never change it."""
    return load_pipeline("tiny-sdxl", "ddpm")


def _plain() -> StableDiffusionXLPipeline:
    """The tiny SDXL loaded by plain diffusers, with the scheduler it was saved with (Euler)."""
    plain = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir("tiny-sdxl"))
    plain.set_progress_bar_config(disable=True)
    return plain


def test_the_adapter_encodes_text_as_the_pipeline_does(pipe):
    adapter = adapter_for(pipe)
    assert isinstance(adapter, SDXLAdapter) and adapter.model_kind == "diffusion"
    # 32 tokens of 32 + 48 penultimate-state channels, and the 48-wide pooled row.
    assert adapter.text_shape() == (33, 80)
    text = adapter.encode_prompts(PROMPTS)
    with torch.no_grad():  # as the pipeline's __call__ runs it
        embeds, negative, pooled, negative_pooled = _plain().encode_prompt(PROMPTS, do_classifier_free_guidance=True)
    assert text.shape == (2, 33, 80)
    assert torch.equal(text[:, :-1], embeds)
    assert torch.equal(text[:, -1, :48], pooled) and not text[:, -1, 48:].any()
    # force_zeros_for_empty_prompt (SDXL's default): the pipeline guides against zeros, tokens and pooled alike.
    assert pipe.config.force_zeros_for_empty_prompt
    assert not negative.any() and not negative_pooled.any()
    assert adapter.negative_text().shape == (1, 33, 80) and not adapter.negative_text().any()


def test_one_denoiser_call_is_the_unets_with_the_pipelines_time_ids(pipe):
    """``predict`` passes the UNet what the pipeline's denoising loop does: the token states, the pooled prompt and
    ``_get_add_time_ids`` of the default sizes (original = target = the image, crop (0, 0)), at the integer
    timestep."""
    adapter = adapter_for(pipe)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 33, 80, generator=generator)
    t = torch.tensor([901, 1])
    plain = _plain()
    time_ids = plain._get_add_time_ids(
        (RESOLUTION, RESOLUTION), (0, 0), (RESOLUTION, RESOLUTION), torch.float32, text_encoder_projection_dim=48
    )
    with torch.no_grad():
        ours = adapter.predict(latents, t, text)
        theirs = plain.unet(
            latents,
            t,
            encoder_hidden_states=text[:, :-1],
            added_cond_kwargs={"text_embeds": text[:, -1, :48], "time_ids": time_ids.repeat(2, 1)},
        ).sample
    assert torch.equal(ours, theirs)


def test_the_deterministic_ddim_chain_is_the_sdxl_pipelines_own_sampling(pipe):
    """DDIM with eta = 0 is deterministic in both: genrl's env stepped with its policy's mean (the std is 0, so the
    action is the mean exactly) against the pipeline with a DDIMScheduler and ``eta=0.0``, guided by the same doubled
    batch, from the same initial noise. Exact (``torch.equal``) at every step: the same UNet on the same batch, and
    ``ddim_step`` mirrors ``DDIMScheduler.step``'s operation order.

    The pipeline's DDIM is configured as genrl's: no x0 clipping (genrl never clips), and ``set_alpha_to_one=False``,
    since genrl's last step (after ddpo-pytorch) lands on timestep 0, alphas_cumprod[0], which is what diffusers'
    ``final_alpha_cumprod`` is without set_alpha_to_one."""
    env = make_env("ddpm", 2, pipe, None, num_steps=STEPS, resolution=RESOLUTION, eta=0.0)
    policy = make_policy(env, guidance_scale=GUIDANCE)
    obs, _ = env.reset(seed=0, options={"prompts": PROMPTS})
    noise = obs["latents"].clone()
    generator = torch.Generator().manual_seed(0)
    ours = []
    for _ in range(env.num_steps):
        action, _ = policy.act(obs, generator)
        ours.append(action["next_latents"])
        obs, _, terminated, _, info = env.step(action)
    assert bool(terminated.all())

    plain = _plain()
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    theirs = []

    def record(_pipe, _i, _t, tensors):
        theirs.append(tensors["latents"].clone())
        return tensors

    latents = plain(
        PROMPTS,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        eta=0.0,
        height=RESOLUTION,
        width=RESOLUTION,
        latents=noise.clone(),
        output_type="latent",
        callback_on_step_end=record,
    ).images
    assert env.timesteps == plain.scheduler.timesteps.tolist()
    assert len(theirs) == len(ours) == STEPS
    for step, (mine, pipeline_latents) in enumerate(zip(ours, theirs)):
        assert torch.equal(mine, pipeline_latents), step
    assert torch.equal(ours[-1], latents)
    with torch.no_grad():  # the pipeline's own decode, as its __call__ runs it after the loop (no latents_mean here)
        decoded = plain.vae.decode(latents / plain.vae.config.scaling_factor).sample
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


def test_ddpm_training_exports_a_lora_that_plain_sdxl_loads(tmp_path):
    rank, alpha = 4, 8.0  # alpha != rank: diffusers must get the scale too
    lora = ["--finetune", "lora", "--lora-rank", str(rank), "--lora-alpha", str(alpha), "--learning-rate", "0.05"]
    run = _train(tmp_path, "sdxl", "--model", "tiny-sdxl", "--env", "ddpm", *lora)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:  # training recomputes the sampling log-probs (tests/test_train.py: 1e-6)
        assert abs(m["ratio_mean_first_minibatch"] - 1) < 1e-6
    ckpt = run / "checkpoints" / "latest"

    loaded = _plain()
    loaded.load_lora_weights(ckpt)
    ours = _plain()  # the trained denoiser, rebuilt as genrl trains it: the LoRA added, its trained tensors loaded
    add_lora(ours.unet, rank, alpha, DEFAULT_LORA_TARGETS)
    _, unexpected = ours.unet.load_state_dict(load_file(ckpt / "trainable.safetensors"), strict=False)
    assert not unexpected
    base = _plain()

    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 33, 80, generator=generator)
    t = torch.tensor([901, 401])
    with torch.no_grad():
        from_diffusers = SDXLAdapter(loaded).predict(latents, t, text)
        expected = SDXLAdapter(ours).predict(latents, t, text)
        untouched = SDXLAdapter(base).predict(latents, t, text)
    # The same LoRA weights at the same scale alpha / rank on the same layers: diffusers' PEFT layers compute what
    # genrl's do.
    torch.testing.assert_close(from_diffusers, expected, rtol=0, atol=1e-6)
    assert (from_diffusers - untouched).abs().max() > 1e-5

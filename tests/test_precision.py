"""Mixed precision (genrl/precision.py): half frozen weights, fp32 trainable weights and step maths, fp16's loss
scaling and the NaN guard, checkpoints and resume across precisions."""

import functools
import json

import pytest
import torch
from safetensors.torch import load_file

import genrl.precision
from genrl.assemble import assemble
from genrl.config import replace_config
from genrl.presets import preset
from genrl.rollout import SamplingBatch, collect
from genrl.train import main
from tests.helpers import expect_error, fast_args, logged_metrics

PROMPTS = ["a cat", "a dog"]

# bf16 keeps 8 bits of mantissa: a UNet output differs from fp32's in about its third digit. The log-prob is a mean
# over latent dims of squared differences divided by the step's variance, so the difference is largest on the last
# DDIM steps, whose std is smallest (measured on the shapes models: 1e-3 typical, 1.7e-2 at worst).
LOG_PROB_TOLERANCE = 2e-2


def _tiny(env: str, precision: str, **changes):
    name = "tiny-compression" if env == "lcm" else "tiny-ddpo-compression"
    cfg = replace_config(preset(name), mixed_precision=precision, finetune="lora", sample_batch_size=2, **changes)
    return assemble(replace_config(cfg, train_batch_size=2))


@pytest.mark.parametrize("env", ["lcm", pytest.param("ddpm", marks=pytest.mark.slow)])
def test_frozen_weights_are_half_while_trainable_weights_state_and_step_maths_stay_fp32(env):
    parts = _tiny(env, "bf16")
    pipe = parts.pipeline
    assert (
        {p.dtype for p in pipe.vae.parameters()}
        == {p.dtype for p in pipe.text_encoder.parameters()}
        == {torch.bfloat16}
    )
    frozen = {p.dtype for p in pipe.unet.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in pipe.unet.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    rollout = collect(parts.env, parts.policy, SamplingBatch(PROMPTS, 0, 1))
    step = rollout.steps[0]
    assert step["latents"].dtype == step["next_latents"].dtype == step["log_prob"].dtype == torch.float32
    assert rollout.prompt_embeds.dtype == rollout.images.dtype == torch.float32
    assert torch.isfinite(rollout.rewards).all()


@pytest.mark.slow
@pytest.mark.parametrize("env", ["lcm", "ddpm"])
def test_a_bf16_steps_log_prob_is_within_tolerance_of_fp32s_on_the_same_noise(env):
    full, half = _tiny(env, "no"), _tiny(env, "bf16")
    rollout = collect(full.env, full.policy, SamplingBatch(PROMPTS, 0, 1))
    differences = []
    with torch.no_grad():
        for step in rollout.steps:  # fp32's trajectory, scored by the bf16 policy (the same LoRA: same seed)
            obs = {
                "latents": step["latents"],
                "timestep": step["timestep"],
                "next_timestep": step["next_timestep"],
                "stochastic": torch.ones(2, dtype=torch.bool),
                "prompt_embeds": rollout.prompt_embeds,
                "negative_prompt_embeds": rollout.negative_prompt_embeds.expand(2, -1, -1),
            }
            log_prob = half.policy.action_log_prob(half.policy.distribution(obs), step["next_latents"])
            assert log_prob.dtype == torch.float32
            differences.append((log_prob - step["log_prob"]).abs().max().item())
    assert 0 < max(differences) <= LOG_PROB_TOLERANCE, differences  # bf16 was used, and stays close


def _assert_ratio_starts_at_one_and_checkpoint_is_fp32_lora(run, precision: str) -> None:
    # Sampled in batches of 4, trained in minibatches of 2: the ratio compares two different UNet batches.
    for record in logged_metrics(run):
        assert abs(record["ratio_mean_first_minibatch"] - 1) <= 1e-4, record  # within PPO's clip range
        assert record.get("steps_skipped", 0) == 0 if precision == "fp16" else "steps_skipped" not in record
    weights = load_file(run / "checkpoints" / "latest" / "trainable.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}


@pytest.mark.slow
def test_ppo_ratio_starts_each_update_at_one_and_the_checkpoint_is_fp32_lora(tmp_path):
    """bf16 here; fp16's run is the resume test's below (fp16 is about 5x slower on a CPU)."""
    main(fast_args(tmp_path, "r", "--mixed-precision", "bf16", "--epochs", "2", "--finetune", "lora"))
    _assert_ratio_starts_at_one_and_checkpoint_is_fp32_lora(tmp_path / "r", "bf16")


@pytest.mark.slow
def test_a_step_the_fp16_scaler_skips_is_not_a_divergence(tmp_path, monkeypatch):
    # A loss scale of 2^60 overflows fp16's backward pass (its largest number is 65504): the scaler skips those
    # steps and halves its scale each time until the gradients fit.
    scaler = functools.partial(torch.amp.GradScaler, init_scale=2.0**60)
    monkeypatch.setattr(genrl.precision.torch.amp, "GradScaler", scaler)
    main(fast_args(tmp_path, "r", "--mixed-precision", "fp16", "--epochs", "2", "--save-every", "1"))
    records = logged_metrics(tmp_path / "r")
    assert [r["epoch"] for r in records] == [1, 2] and records[0]["steps_skipped"] > 0
    state = json.loads((tmp_path / "r" / "checkpoints" / "latest" / "state.json").read_text())
    assert 0 < state["loss_scaling"]["scale"] < 2.0**60


@pytest.mark.slow
def test_a_diverging_fp16_run_still_stops_with_one_line(tmp_path, capsys):
    expect_error(
        capsys,
        fast_args(tmp_path, "r", "--mixed-precision", "fp16", "--learning-rate", "3e3", "--epochs", "4"),
        "so training diverged",
    )


@pytest.mark.slow
def test_resume_continues_fp16_exactly_and_takes_another_precision(tmp_path):
    args = ["--mixed-precision", "fp16", "--save-every", "1", "--finetune", "lora"]
    main(fast_args(tmp_path, "straight", *args, "--epochs", "2"))
    _assert_ratio_starts_at_one_and_checkpoint_is_fp32_lora(tmp_path / "straight", "fp16")
    main(fast_args(tmp_path, "split", *args, "--epochs", "1"))
    main(["--resume", str(tmp_path / "split"), "--epochs", "2"])
    straight, split = logged_metrics(tmp_path / "straight"), logged_metrics(tmp_path / "split")
    assert [(m["reward_mean"], m["loss"]) for m in straight] == [(m["reward_mean"], m["loss"]) for m in split]
    # The checkpoint is fp32 LoRA, whatever the precision: a run goes on in another.
    main(["--resume", str(tmp_path / "split"), "--epochs", "3", "--mixed-precision", "bf16"])
    assert [m["epoch"] for m in logged_metrics(tmp_path / "split")] == [1, 2, 3]

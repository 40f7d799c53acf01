"""The mixed-precision probe (benchmarks/precision_probe.py) on tiny UNets and a tiny SD3.5-style transformer:
genrl's casts as the probe applies them, a finite PPO update, and the table and JSON its command writes."""

import json
import math

import torch

import benchmarks.precision_probe as probe


def test_a_bf16_update_has_half_frozen_weights_and_fp32_lora_with_finite_gradients():
    result = probe.probe_case(probe.TINY_LCM_UNET, "bf16", batch_size=1, resolution=64, repeats=1)
    assert result["family"] == "lcm" and (result["lora_rank"], result["lora_alpha"]) == (16, 32.0)  # rlcm presets
    assert result["frozen_dtypes"] == [str(torch.bfloat16)]
    assert result["trainable_dtypes"] == result["grad_dtypes"] == [str(torch.float32)]
    assert result["prediction_dtype"] == result["log_prob_dtype"] == str(torch.float32)  # cast up after autocast
    assert result["grads_missing"] == 0 and result["grads_finite"]
    assert math.isfinite(result["loss"]) and 0 < result["grad_norm"] < math.inf
    assert abs(result["ratio_mean"] - 1) <= 1e-4  # the update recomputes the sampling pass's log-prob
    assert 0 < result["before_mib"] <= result["peak_mib"]
    assert result["wall_s"] > 0 and result["cpu_s"] > 0 and len(result["wall_s_all"]) == 1


def test_a_flow_update_takes_flow_grpos_lora_kl_and_guidance_with_half_frozen_weights():
    result = probe.probe_case(probe.TINY_SD35_TRANSFORMER, "bf16", batch_size=2, resolution=64, repeats=1)
    assert result["family"] == "flow" and result["preset"] == "flow-grpo-compression"
    assert (result["lora_rank"], result["lora_alpha"], result["kl_coef"]) == (32, 64.0, 0.04)
    assert result["guidance_scale"] == 4.5 and result["latent_shape"] == [2, 16, 8, 8]
    assert result["frozen_dtypes"] == [str(torch.bfloat16)]
    assert result["trainable_dtypes"] == result["grad_dtypes"] == [str(torch.float32)]
    assert result["prediction_dtype"] == result["log_prob_dtype"] == str(torch.float32)
    assert result["grads_missing"] == 0 and result["grads_finite"] and 0 < result["grad_norm"] < math.inf
    assert abs(result["ratio_mean"] - 1) <= 1e-4


def test_the_flow_pair_is_a_middle_sde_step_of_the_presets_schedule():
    scheduler = probe.make_scheduler("flow")
    sigma, sigma_next = probe.training_pair("flow", scheduler, 10, 64, 2)
    scheduler.set_timesteps(10)
    assert (sigma, sigma_next) == (float(scheduler.sigmas[5]), float(scheduler.sigmas[6]))
    assert 0 < sigma_next < sigma < 1  # the SDE's noise is finite there (it diverges at sigma = 1)


def test_the_command_prints_the_comparison_and_writes_it_as_json(tmp_path, monkeypatch, capsys):
    def in_process(args, config, precision):  # the fresh process of each case, without its start-up time
        case = probe.probe_case(probe.CONFIGS[config], precision, args.batch_size, args.resolution, args.repeats)
        return {"config": config, **case}

    monkeypatch.setattr(probe, "run_case", in_process)
    output = tmp_path / "probe.json"
    probe.main(probe.Args(configs=("tiny-sd",), resolution=64, repeats=1, output=output))
    results = json.loads(output.read_text())
    fp32, bf16 = results["cases"]
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    assert fp32["family"] == "ddpm" and (fp32["lora_rank"], fp32["lora_alpha"]) == (4, 4.0)  # ddpo presets
    assert fp32["frozen_dtypes"] == [str(torch.float32)] and bf16["frozen_dtypes"] == [str(torch.bfloat16)]
    (row,) = results["summary"]
    assert row["peak_ratio"] == bf16["peak_mib"] / fp32["peak_mib"]
    assert row["wall_ratio"] == bf16["wall_s"] / fp32["wall_s"]
    assert results["meta"]["total_s"] > 0
    table = capsys.readouterr().out
    assert f"| tiny-sd | bf16 | {fp32['peak_mib']:.0f} | {bf16['peak_mib']:.0f} | {row['peak_ratio']:.2f}x |" in table

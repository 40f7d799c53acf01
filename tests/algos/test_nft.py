"""DiffusionNFT (``genrl/algos/nft.py``): its loss against the paper's equations written out, the clean estimate
against diffusers' scheduler, training on the flow and DDPM families, the refusal on a consistency model, and an
exact resume of the old weights."""

import math

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from genrl.adapters.base import ModelAdapter
from genrl.algos.nft import nft_loss, optimality_probability
from genrl.train import main
from tests.helpers import expect_error, fast_args, logged_metrics, metrics_without_timings

NFT = ["--algo", "nft", "--group-size", "2"]


def paper_loss(v_theta, v_old, x_t, x0, sigma, advantages, beta, adv_max):
    """Eqs. 6-8 in velocity form for a flow model, one sample at a time in float64: implicit policies, x0 = x_t -
    sigma v, the self-normalised squared error of each, weighted by the optimality probability."""
    total = 0.0
    for i in range(len(x0)):
        r = min(max(0.5 + 0.5 * max(-adv_max, min(adv_max, float(advantages[i]))) / adv_max, 0.0), 1.0)
        terms = []
        for v in (beta * v_theta[i] + (1 - beta) * v_old[i], (1 + beta) * v_old[i] - beta * v_theta[i]):
            error = (x_t[i] - sigma[i] * v) - x0[i]
            terms.append(float((error**2).mean()) / max(float(error.abs().mean()), 1e-5))
        total += r * terms[0] + (1 - r) * terms[1]
    return adv_max / beta * total / len(x0)


def test_the_loss_is_the_papers():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64), torch.randn(5, 4, 3, 3, generator=g)
    sigma = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.01], dtype=torch.float64)
    x_t = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
    v_theta, v_old = torch.randn(2, 5, 4, 3, 3, generator=g, dtype=torch.float64)
    advantages = torch.tensor([7.0, 2.0, 0.0, -1.0, -9.0])
    for beta in (1.0, 0.1):
        expected = paper_loss(v_theta, v_old, x_t, x0, sigma, advantages, beta, 5.0)
        estimate = lambda v: x_t - sigma[:, None, None, None] * v
        r = optimality_probability(advantages.double(), 5.0)
        got = nft_loss(estimate(v_theta), estimate(v_old), x0, r, beta, 5.0)
        assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("r, closer", [(1.0, True), (0.0, False)])
def test_a_good_sample_pulls_the_prediction_to_its_target_and_a_bad_one_pushes_it_away(r, closer):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 4, 8, 8, generator=g)
    v_old = torch.randn(1, 4, 8, 8, generator=g)  # the old estimate x0 - v_old, the target x0
    v_theta = v_old.clone().requires_grad_()
    nft_loss(x0 - v_theta, x0 - v_old, x0, torch.tensor([r]), 1.0, 5.0).backward()
    stepped = v_theta.detach() - 1e-3 * v_theta.grad
    assert (stepped.norm() < v_old.norm()) == closer  # the target velocity is 0 here


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_clean_estimate_is_the_schedulers(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    adapter = ModelAdapter.__new__(ModelAdapter)  # only the scheduler is read
    adapter.pipeline = type("Pipe", (), {"scheduler": scheduler})()
    adapter.model_kind = "ddpm"
    g = torch.Generator().manual_seed(2)
    x_t, prediction = torch.randn(2, 1, 4, 8, 8, generator=g)
    for t in (999, 500, 3):
        expected = scheduler.step(prediction, t, x_t).pred_original_sample
        got = adapter.clean_estimate(x_t, prediction, torch.tensor(t))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("env", ["flow", "ddpm"])
def test_nft_trains_the_flow_and_diffusion_families(tmp_path, env):
    main(fast_args(tmp_path, "r", "--env", env, "--model", "tiny", *NFT, "--save-every", "1"))
    run = tmp_path / "r"
    metrics = logged_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2] and all(math.isfinite(m["loss"]) for m in metrics)
    assert [m["old_decay"] for m in metrics] == [0.001 * 2, 0.001 * 4]  # two optimizer steps an epoch
    first, second = (load_file(run / "checkpoints" / f"epoch-000{e}" / "trainable.safetensors") for e in (1, 2))
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_nft_refuses_a_consistency_model(tmp_path, capsys):
    expect_error(capsys, fast_args(tmp_path, "r", "--env", "lcm", "--model", "tiny", *NFT), "consistency model")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_nft_resumes_exactly_with_its_old_weights(tmp_path):
    common = ["--env", "flow", "--model", "tiny", *NFT, "--save-every", "1"]
    main(fast_args(tmp_path, "whole", *common, "--epochs", "3"))
    main(fast_args(tmp_path, "split", *common, "--epochs", "2"))
    main(["--resume", str(tmp_path / "split"), "--epochs", "3"])
    whole, split = (metrics_without_timings(tmp_path / name) for name in ("whole", "split"))
    assert whole == split and len(whole) == 3
    extra = torch.load(tmp_path / "split" / "checkpoints" / "epoch-0003" / "optimizer.pt", weights_only=True)
    assert extra["algorithm"]["optimizer_steps"] == 6


def test_a_checkpoint_saved_before_the_first_update_resumes():
    from genrl.algos.nft import NFT, NFTConfig

    saved = NFT(NFTConfig()).state_dict()  # --keep-best saves epoch 0, before any old weights exist
    restored = NFT(NFTConfig())
    restored.load_state_dict(saved)
    assert saved["old"] is None and restored.old is None and restored.optimizer_steps == 0

"""Diffusion-DPO (``--algo dpo``, genrl/algos/dpo.py): its loss against the paper's Bradley-Terry likelihood, its
pairs, its timesteps, training online and from a preference set on disk, its refusals, and the adapters' encode."""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image
from safetensors.torch import load_file

from genrl.adapters import adapter_for
from genrl.algos.dpo import PreferenceSet, dpo_loss, preference_pairs, sample_timesteps
from genrl.models import load_pipeline
from genrl.shapes.preference_pairs import main as write_pairs
from genrl.train import main
from tests.helpers import expect_error, fast_args, logged_metrics

DPO = ["--algo", "dpo", "--finetune", "lora", "--dpo.timesteps-per-pair", "2"]


# --------------------------------------------------------------------------------------------------
# The maths
# --------------------------------------------------------------------------------------------------
def bradley_terry_nll(err_w, err_l, ref_w, ref_l, beta):
    """-log P(chosen > rejected) with the implicit rewards r(x) = -beta/2 (err_theta(x) - err_ref(x)) (the paper's
    eq. 14, T omega(lambda_t) folded into beta): P = exp(r_w) / (exp(r_w) + exp(r_l))."""
    r_w, r_l = -beta / 2 * (err_w - ref_w), -beta / 2 * (err_l - ref_l)
    return -torch.log(torch.exp(r_w) / (torch.exp(r_w) + torch.exp(r_l)))


def test_the_loss_is_the_bradley_terry_likelihood_of_the_preference():
    gen = torch.Generator().manual_seed(0)
    err_w, err_l, ref_w, ref_l = (torch.rand(16, generator=gen, dtype=torch.float64) for _ in range(4))
    for beta in (1.0, 5.0, 100.0):
        loss, margin = dpo_loss(err_w, err_l, ref_w, ref_l, beta)
        torch.testing.assert_close(loss, bradley_terry_nll(err_w, err_l, ref_w, ref_l, beta))
        assert torch.equal(margin > 0, loss < math.log(2))  # the margin is positive where the pair is ranked right
    # The sign: the policy's chosen error below the reference's lowers the loss, above raises it.
    ref, same = torch.tensor([0.5]), torch.tensor([0.5])
    at_reference = dpo_loss(ref, same, ref, same, 100.0)[0]
    assert at_reference.item() == pytest.approx(math.log(2))
    assert dpo_loss(torch.tensor([0.49]), same, ref, same, 100.0)[0] < at_reference
    assert dpo_loss(torch.tensor([0.51]), same, ref, same, 100.0)[0] > at_reference
    assert dpo_loss(ref, torch.tensor([0.51]), ref, same, 100.0)[0] < at_reference  # the rejected's error rising


def test_each_group_pairs_its_best_with_its_worst_and_a_tied_group_gives_none():
    rewards = torch.tensor([1.0, 3.0, 2.0, 5.0, 5.0, 5.0, 0.0, -1.0, 4.0])
    chosen, rejected = preference_pairs(rewards, 3)
    assert chosen.tolist() == [1, 8] and rejected.tolist() == [0, 7]
    assert [len(x) for x in preference_pairs(torch.ones(4), 2)] == [0, 0]


class _Stub:
    """An adapter as sample_timesteps reads one."""

    def __init__(self, kind, scheduler):
        self.model_kind, self.pipeline = kind, type("P", (), {"scheduler": scheduler})()

    def flow_schedule_options(self, config, num_steps, latent_size):
        return {}


def test_flow_timesteps_are_the_training_schedulers_sigmas_at_logit_normal_indices():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's, as flow_grpo reads it: sigmas[floor(1000 u)]
    t = sample_timesteps(_Stub("flow", scheduler), 4096, torch.Generator().manual_seed(1), 16)
    u = torch.sigmoid(torch.randn(4096, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    torch.testing.assert_close(t, scheduler.sigmas[(u * 1000).long()].float())
    assert 0 < t.min() and t.max() <= 1 and t.median() > 0.6  # shift 3 moves the logit-normal's median 0.5 to 0.75
    diffusion = sample_timesteps(_Stub("diffusion", scheduler), 4096, torch.Generator().manual_seed(1), 16)
    assert diffusion.dtype == torch.int64 and 0 <= diffusion.min() and diffusion.max() < 1000


# --------------------------------------------------------------------------------------------------
# Training, online and offline
# --------------------------------------------------------------------------------------------------
def _lora_moved(run):
    first, second = (load_file(run / "checkpoints" / f"epoch-000{e}" / "trainable.safetensors") for e in (1, 2))
    return any(not torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("env", ["flow", "ddpm"])
def test_online_dpo_trains_the_flow_and_the_diffusion_family(tmp_path, env):
    main(fast_args(tmp_path, "r", "--env", env, "--model", "tiny", *DPO, "--group-size", "2", "--save-every", "1"))
    metrics = logged_metrics(tmp_path / "r")
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(m["pairs"] > 0 and math.isfinite(m["loss"]) and m["reward_gap"] > 0 for m in metrics)
    assert metrics[0]["loss"] == pytest.approx(math.log(2))  # epoch 1's one step follows its loss: policy = reference
    assert _lora_moved(tmp_path / "r")


@pytest.fixture(scope="module")
def shapes_pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs") / "set"
    write_pairs([str(folder), "--pairs", "6", "--seed", "3"])
    return folder


def test_the_example_set_prefers_the_image_that_follows_its_prompt(shapes_pairs):
    from genrl.rewards.shapes import shapes_alignment

    lines = [json.loads(line) for line in (shapes_pairs / "pairs.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(set(line) == {"prompt", "chosen", "rejected"} for line in lines)
    preferences = PreferenceSet.read(shapes_pairs)
    assert preferences.size == (64, 64)

    def images(paths):
        return torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))) for p in paths]) / 255

    chosen = images(preferences.chosen).permute(0, 3, 1, 2).float()
    rejected = images(preferences.rejected).permute(0, 3, 1, 2).float()
    assert shapes_alignment.accuracy(chosen, preferences.prompts) == 1.0
    assert shapes_alignment.accuracy(rejected, preferences.prompts) == 0.0


def test_offline_dpo_trains_from_a_preference_set(tmp_path, shapes_pairs):
    pairs = ["--dpo.pairs", str(shapes_pairs), "--dpo.train-batch-size", "2", "--dpo.pairs-per-epoch", "4"]
    main(fast_args(tmp_path, "r", "--env", "flow", "--model", "tiny", *DPO, *pairs, "--save-every", "1"))
    metrics = logged_metrics(tmp_path / "r")
    assert [m["pairs"] for m in metrics] == [4, 4] and all(math.isfinite(m["reward_mean"]) for m in metrics)
    assert _lora_moved(tmp_path / "r")


# --------------------------------------------------------------------------------------------------
# Refusals: one line, before the run folder is written
# --------------------------------------------------------------------------------------------------
def test_dpo_refuses_what_it_cannot_train(tmp_path, capsys):
    args = lambda *extra: fast_args(tmp_path, "r", "--model", "tiny", *DPO, *extra)
    expect_error(capsys, args("--env", "lcm", "--group-size", "2"), "a consistency-distilled LCM is not trained on it")
    expect_error(capsys, args("--env", "flow", "--group-size", "1"), "--group-size 1 makes none; pass --group-size 2")
    expect_error(capsys, args("--env", "flow", "--group-size", "2", "--finetune", "full"), "needs --finetune lora")
    assert not (tmp_path / "r").exists()


def _broken_sets(folder, good):
    """(name, folder, expected message) of broken preference sets built from the ``good`` one."""
    cases = [("missing", folder / "nowhere", "no such folder; make one with")]
    empty = folder / "empty"
    empty.mkdir()
    cases.append(("no index", empty, "has no pairs.jsonl"))
    lines = (good / "pairs.jsonl").read_text().splitlines()

    def variant(name, records, message):
        target = folder / name
        target.mkdir()
        (target / "images").symlink_to(good / "images")
        (target / "pairs.jsonl").write_text("\n".join(records) + "\n")
        cases.append((name, target, message))

    no_field = json.loads(lines[1])
    del no_field["rejected"]
    variant("field", [lines[0], json.dumps(no_field)], "line 2 has no 'rejected'")
    variant("json", [lines[0], "{not json"], "line 2 is not JSON")
    variant("image", [lines[0].replace("00000-chosen", "99999-chosen")], "its chosen image")
    small = folder / "small.png"
    Image.new("RGB", (32, 32)).save(small)
    variant("size", [lines[0], json.dumps({**json.loads(lines[1]), "rejected": str(small)})], "is 32x32, the set's")
    return cases


def test_a_broken_preference_set_is_one_line_before_the_run_folder(tmp_path, capsys, shapes_pairs):
    sets = tmp_path / "sets"
    sets.mkdir()
    for name, folder, message in _broken_sets(sets, shapes_pairs):
        args = fast_args(tmp_path, name, "--env", "flow", "--model", "tiny", *DPO, "--dpo.pairs", str(folder))
        expect_error(capsys, args, message)
        assert not (tmp_path / name).exists()
    # Against the model: the set's 64 x 64 images, a run at 32 x 32.
    args = fast_args(tmp_path, "r", "--env", "flow", "--model", "tiny", *DPO, "--dpo.pairs", str(shapes_pairs))
    expect_error(capsys, [*args, "--resolution", "32"], "its images are 64x64, the run trains at 32x32")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------------
# ModelAdapter.encode: decode's inverse convention
# --------------------------------------------------------------------------------------------------
def test_encode_inverts_decode_on_the_shapes_vae_and_applies_the_flow_vaes_shift():
    from genrl.shapes.world import sample_dataset

    images = torch.from_numpy(sample_dataset(4, 0)[0]).permute(0, 3, 1, 2).float() / 255
    shapes = adapter_for(load_pipeline("shapes", "ddpm"))
    with torch.no_grad():
        latents = shapes.encode(images)
        assert (shapes.decode(latents) - images).abs().mean() < 0.03  # the trained VAE reproduces the picture
    flow = adapter_for(load_pipeline("tiny", "flow"))
    vae = flow.pipeline.vae
    assert vae.config.shift_factor != 0
    with torch.no_grad():
        expected = (vae.encode(images * 2 - 1).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
        torch.testing.assert_close(flow.encode(images), expected, rtol=0, atol=0)

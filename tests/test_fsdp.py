"""``--fsdp``: two processes with the denoiser's frozen weights sharded by FSDP2 (gloo, on a CPU) take the plain
two-process run's updates, bit for bit, resume, and export a LoRA that plain diffusers loads."""

from pathlib import Path

import pytest
import torch
from diffusers import LatentConsistencyModelPipeline
from safetensors.torch import load_file

from genrl.shapes.tiny import tiny_pipeline_dir
from tests.helpers import expect_error, fast_args, metrics_without_timings, tiny_lcm_unet_output
from tests.launching import launch, stopped_after_epoch_one

pytestmark = pytest.mark.usefixtures("tiny_lcm_built")  # tests/conftest.py

# GRPO groups of 2 with the cats' groups dropped, and minibatches of one trajectory per process: a process holds
# no row of some minibatches (and may keep no group at all), where it runs its passes of weight zero; an
# evaluation and an EMA grid every epoch, which every process samples.
_RUN = [
    *("--finetune", "lora", "--epochs", "2", "--save-every", "1", "--keep-checkpoints", "3", "--ema-decay", "0.9"),
    *("--group-size", "2", "--reward", "smooth_rewards:mean_but_one_for_cats", "--ppo.train-batch-size", "1"),
    *("--eval-every", "1", "--eval-size", "4"),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, reward_plugin_folder) -> Path:
    """The same two-process run without and with --fsdp, trained once for the module."""
    home = tmp_path_factory.mktemp("fsdp")
    (home / "prompts.txt").write_text("a cat\na dog\na bee\n")
    for name, extra in (("plain", []), ("sharded", ["--fsdp"])):
        args = fast_args(home, name, *_RUN, "--prompts", str(home / "prompts.txt"), *extra)
        proc = launch(2, args, pythonpath=str(reward_plugin_folder))
        assert proc.returncode == 0, proc.stderr[-3000:]
        (home / f"{name}.stderr").write_text(proc.stderr)
    return home


@pytest.mark.slow
def test_each_process_holds_about_half_of_the_frozen_weights(runs):
    (line,) = [line for line in (runs / "sharded.stderr").read_text().splitlines() if line.startswith("--fsdp:")]
    held, frozen = (int(word.replace(",", "")) for word in line.split() if word[0].isdigit())
    assert frozen / 2 <= held <= frozen / 2 * 1.02, line  # dim 0 split in two: the first process's half rounds up
    assert "--fsdp:" not in (runs / "plain.stderr").read_text()


@pytest.mark.slow
def test_sharded_runs_take_the_plain_runs_updates_and_export_its_lora(runs):
    plain, sharded = metrics_without_timings(runs / "plain"), metrics_without_timings(runs / "sharded")
    assert [m["epoch"] for m in sharded] == [0, 1, 2] and sharded == plain
    assert all("ema_reward_mean" in m and "eval_reward_mean" in m for m in sharded[1:])
    assert min(m["groups_kept_fraction"] for m in sharded if m["epoch"]) < 1  # groups were dropped
    for name in ("trainable.safetensors", "pytorch_lora_weights.safetensors"):
        a, b = (load_file(runs / run / "checkpoints/latest" / name) for run in ("plain", "sharded"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # Plain diffusers loads the export and samples with it.
    folder = tiny_pipeline_dir(lcm=True)
    pipe = LatentConsistencyModelPipeline.from_pretrained(folder)
    pipe.load_lora_weights(runs / "sharded" / "checkpoints" / "latest")
    base = LatentConsistencyModelPipeline.from_pretrained(folder).unet
    loaded, untouched = tiny_lcm_unet_output(pipe.unet), tiny_lcm_unet_output(base)
    assert (loaded - untouched).abs().max() > 1e-6


@pytest.mark.slow
def test_a_sharded_run_resumed_is_the_uninterrupted_run(runs, reward_plugin_folder, tmp_path):
    split = stopped_after_epoch_one(runs / "sharded", tmp_path / "split")
    proc = launch(2, ["--resume", str(split)], pythonpath=str(reward_plugin_folder))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics_without_timings(split) == metrics_without_timings(runs / "sharded")


@pytest.mark.slow
def test_dpg_sharded_follows_dpg_plain(tmp_path):
    """DPG backpropagates the reward through the sampling chain, whose passes every process runs alike. The
    weights' gradients come out of FSDP2's backward in another order of sums, so the numbers agree to float
    rounding rather than bit for bit (the rewards' std, of near-equal rewards, to 1e-7 of a reward)."""
    dpg = ["--finetune", "lora", "--algo", "dpg", "--reward", "tests.test_extensions:WeightedBrightness()"]
    dpg += ["--sample-batch-size", "2", "--eval-every", "1", "--eval-size", "4"]
    for name, extra in (("plain", []), ("sharded", ["--fsdp"])):
        proc = launch(2, fast_args(tmp_path, name, *dpg, *extra), pythonpath=".")
        assert proc.returncode == 0, proc.stderr[-3000:]
    plain, sharded = metrics_without_timings(tmp_path / "plain"), metrics_without_timings(tmp_path / "sharded")
    assert [m.keys() for m in sharded] == [m.keys() for m in plain] and len(plain) == 3
    for a, b in zip(plain, sharded):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["epoch"], key)
    assert any(a["grad_norm"] != 0 for a in plain[1:])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--fsdp"], "--fsdp shards the weights over the run's processes, and this run has one"),
        (["--fsdp", "--finetune", "full"], "this run has --finetune full --algo ppo: drop --fsdp"),
        (["--fsdp", "--finetune", "lora", "--algo", "nft"], "this run has --finetune lora --algo nft: drop --fsdp"),
    ],
)
def test_fsdp_where_it_cannot_shard_is_one_line(tmp_path, capsys, flags, message):
    expect_error(capsys, fast_args(tmp_path, "r", "--finetune", "lora", *flags), message)


def test_accelerates_own_fsdp_flag_is_one_line_that_names_genrls(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch --use_fsdp sets
    expect_error(capsys, fast_args(tmp_path, "r"), "give genrl --fsdp")
    assert not (tmp_path / "r").exists()

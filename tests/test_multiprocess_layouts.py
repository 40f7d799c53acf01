"""Two processes, launched by ``accelerate launch``, follow one over several minibatches and epochs with gradient
accumulation, to the same weights; a two-process run resumed (by ``python -m genrl.launch``) is the uninterrupted
run."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genrl.shapes.tiny import tiny_pipeline_dir
from tests.helpers import expect_error, logged_metrics
from tests.launching import assert_two_follow_one, launch, stopped_after_epoch_one, train_layout

pytestmark = pytest.mark.usefixtures("tiny_lcm_built")  # tests/conftest.py


@pytest.fixture(scope="module")
def accumulation_runs(tmp_path_factory, reward_plugin_folder) -> Path:
    """The folder of the accumulation-2 layout's runs on one and two processes, trained once for the module. The
    two-process run keeps every checkpoint: the resume test below continues it from its first."""
    home = tmp_path_factory.mktemp("layout")
    flags = ["--save-every", "1", "--keep-checkpoints", "3"]
    return train_layout(home, "accumulation 2", reward_plugin_folder, *flags, launcher="accelerate")


# Accumulation 1 over several minibatches and epochs is the groups layout's (tests/test_multiprocess.py).
@pytest.mark.slow
def test_two_processes_follow_one_process_over_several_minibatches_and_epochs_with_accumulation(accumulation_runs):
    assert_two_follow_one(accumulation_runs, "accumulation 2")
    one, two = (logged_metrics(accumulation_runs / n) for n in ("one", "two"))
    assert [m["reward_queries"] for m in one] == [m["reward_queries"] for m in two] == [16, 32, 48]  # both counted
    # The weights moved the same way: each tensor's change agrees to 1% of its largest entry (the changes are about
    # 1e-4, where a weight's float32 rounding is 1e-8; a gradient not averaged over the processes is off by 100%).
    start = load_file(tiny_pipeline_dir(lcm=True) / "unet" / "diffusion_pytorch_model.safetensors")
    a, b = (load_file(accumulation_runs / n / "checkpoints/latest/trainable.safetensors") for n in ("one", "two"))
    assert a.keys() == b.keys() and a.keys() <= start.keys()
    for key in a:
        change = a[key] - start[key]
        torch.testing.assert_close(b[key] - start[key], change, rtol=0, atol=1e-2 * change.abs().max().item() + 1e-8)
    assert not list((accumulation_runs / "two" / "checkpoints").glob(".staging-*"))


@pytest.mark.slow
def test_two_process_run_resumed_gives_the_uninterruptedlogged_metrics(
    accumulation_runs, reward_plugin_folder, tmp_path, capsys
):
    straight = accumulation_runs / "two"  # 3 epochs on two processes, uninterrupted
    stopped_after_epoch_one(straight, tmp_path / "split")
    proc = launch(2, ["--resume", str(tmp_path / "split"), "--epochs", "3"], pythonpath=str(reward_plugin_folder))
    assert proc.returncode == 0, proc.stderr[-3000:]
    straight, split = logged_metrics(straight), logged_metrics(tmp_path / "split")
    assert [m["epoch"] for m in split] == [1, 2, 3]
    for a, b in zip(straight, split):
        assert (a["reward_mean"], a["loss"], a["reward_queries"]) == (b["reward_mean"], b["loss"], b["reward_queries"])
    # The same run on another number of processes would not be the same run.
    expect_error(capsys, ["--resume", str(tmp_path / "split"), "--epochs", "4"], "trained on 2 processes")

"""Two processes on CPU (gloo), launched as a user launches them: ``accelerate launch --multi_gpu``."""

import json
import os
import subprocess

import torch
from safetensors.torch import load_file

from genrl.distributed import free_port, launch_command
from tests.helpers import fast_args

FAILING_REWARDS = """
import os, time, torch
def dies_on_rank_one(images, prompts, metadata):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("reward model crashed")
    return images.mean(dim=(1, 2, 3))
def stalls_on_rank_one(images, prompts, metadata):
    if os.environ.get("RANK") == "1":
        time.sleep(120)
    return images.mean(dim=(1, 2, 3))
"""


def _launch(processes: int, args: list[str], timeout: float = 240, pythonpath: str | None = None):
    """One process: plain ``python -m genrl.train``; several: ``accelerate launch``."""
    command = launch_command(processes, "genrl.train", args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, os.getcwd()])
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_make_the_first_update_of_one_process_with_the_whole_batch(tmp_path):
    # Adam's first step is lr * g / (|g| + eps): with a tiny eps it divides rounding noise by itself wherever g is
    # tiny. A large eps makes the step proportional to the gradient, so the comparison is at float precision.
    common = ["--epochs", "1", "--batches-per-epoch", "1", "--adam-epsilon", "1", "--learning-rate", "1"]
    one = fast_args(tmp_path, "one", *common, "--sample-batch-size", "4", "--train-batch-size", "4")
    two = fast_args(tmp_path, "two", *common, "--sample-batch-size", "2", "--train-batch-size", "2")
    for processes, args in ((1, one), (2, two)):
        proc = _launch(processes, args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (load_file(tmp_path / n / "checkpoints" / "latest" / "trainable.safetensors") for n in ("one", "two"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    (m1,), (m2,) = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert m1["reward_queries"] == m2["reward_queries"] == 4  # counted over both processes
    for key in ("reward_mean", "reward_std", "grad_norm", "loss"):
        assert abs(m1[key] - m2[key]) <= 1e-5 * max(1.0, abs(m1[key])), key
    assert not (tmp_path / "two" / "checkpoints" / ".staging-epoch-0001").exists()


def test_two_process_run_resumed_gives_the_uninterrupted_metrics(tmp_path):
    args = ["--sample-batch-size", "2", "--train-batch-size", "2"]
    assert _launch(2, fast_args(tmp_path, "straight", *args, "--epochs", "3")).returncode == 0
    assert _launch(2, fast_args(tmp_path, "split", *args, "--epochs", "1")).returncode == 0
    proc = _launch(2, ["--resume", str(tmp_path / "split"), "--epochs", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    straight, split = _metrics(tmp_path / "straight"), _metrics(tmp_path / "split")
    assert [m["epoch"] for m in split] == [1, 2, 3]
    for a, b in zip(straight, split):
        assert (a["reward_mean"], a["loss"], a["reward_queries"]) == (b["reward_mean"], b["loss"], b["reward_queries"])
    # The same run on another number of processes would not be the same run.
    proc = _launch(1, ["--resume", str(tmp_path / "split"), "--epochs", "4"])
    assert proc.returncode == 2 and "trained on 2 processes" in proc.stderr


def test_a_process_that_dies_or_stalls_ends_the_run_with_an_error(tmp_path):
    (tmp_path / "failing_rewards.py").write_text(FAILING_REWARDS)
    args = ["--sample-batch-size", "2", "--train-batch-size", "2", "--process-timeout-s", "5"]
    for reward in ("dies_on_rank_one", "stalls_on_rank_one"):
        run_args = fast_args(tmp_path, reward, *args, "--reward", f"failing_rewards:{reward}")
        proc = _launch(2, run_args, timeout=90, pythonpath=str(tmp_path))  # not a hang: well within the timeout
        assert proc.returncode != 0
        assert "error: another process of this run stopped or stalled" in proc.stderr, proc.stderr[-3000:]
        if reward == "dies_on_rank_one":
            assert "error: reward 'failing_rewards:dies_on_rank_one' raised RuntimeError" in proc.stderr


def test_a_reward_server_that_is_down_stops_every_process(tmp_path):
    url = f"http://127.0.0.1:{free_port()}?retries=2&backoff=0.01"  # nothing listens there
    args = fast_args(tmp_path, "r", "--sample-batch-size", "2", "--train-batch-size", "2", "--reward", url)
    proc = _launch(2, args, timeout=90)
    assert proc.returncode != 0
    assert proc.stderr.count("error: reward server") == 2, proc.stderr[-3000:]  # each process, in one line
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()

"""Two processes on CPU (gloo), launched as a user launches them: ``python -m genrl.launch --num-processes 2``, or
``accelerate launch --multi_gpu --num_processes 2 -m genrl.train``."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from genrl.distributed import free_port, launch_command
from genrl.shapes.tiny import tiny_pipeline_dir
from genrl.train import main
from tests.helpers import expect_error, fast_args, logged_metrics

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

SMOOTH_REWARDS = """
import torch
def mean(images, prompts, metadata):
    return images.mean(dim=(1, 2, 3))
def mean_but_one_for_cats(images, prompts, metadata):  # groups of cats carry no signal
    cats = torch.tensor(["cat" in p for p in prompts], device=images.device)
    return torch.where(cats, 1.0, images.mean(dim=(1, 2, 3)))
"""


@pytest.fixture(autouse=True, scope="module")
def _tiny_pipeline_built():
    """Built once here: two processes that find no tiny pipeline in the cache would both build it."""
    tiny_pipeline_dir(lcm=True)


def _launch(
    processes: int,
    args: list[str],
    timeout: float = 240,
    pythonpath: str | None = None,
    launcher: str = "genrl",
    wait: bool = True,
):
    """One process: plain ``python -m genrl.train``; several: ``python -m genrl.launch`` or ``accelerate launch``.
    ``wait=False``: the started process, to ``_finish`` while this one does other work."""
    if processes > 1 and launcher == "genrl":
        command = [sys.executable, "-m", "genrl.launch", "--num-processes", str(processes), *args]
    else:
        command = launch_command(processes, "genrl.train", args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, os.getcwd()])
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _one_process_in_here(args: list[str]) -> None:
    """``python -m genrl.train args`` on one process, run in this one (as the launched processes: one thread) while
    the launched processes of the comparison run alongside."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(args)
    finally:
        torch.set_num_threads(threads)


def _one_and_two(one: list[str], two: list[str], pythonpath: str | None = None, launcher: str = "genrl") -> None:
    """The same run on one process and on two (launched), both to completion."""
    launched = _launch(2, two, pythonpath=pythonpath, launcher=launcher, wait=False)
    try:
        _one_process_in_here(one)
    finally:
        proc = _finish(launched)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    """A folder with the rewards of these tests, importable here and by the launched processes."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "smooth_rewards.py").write_text(SMOOTH_REWARDS)
    (folder / "failing_rewards.py").write_text(FAILING_REWARDS)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def test_two_processes_make_the_first_update_of_one_process_with_the_whole_batch(tmp_path):
    # Adam's first step is lr * g / (|g| + eps): with a tiny eps it divides rounding noise by itself wherever g is
    # tiny. A large eps makes the step proportional to the gradient, so the comparison is at float precision.
    common = ["--epochs", "1", "--batches-per-epoch", "1", "--adam-epsilon", "1", "--learning-rate", "1"]
    one = fast_args(tmp_path, "one", *common, "--sample-batch-size", "4", "--ppo.train-batch-size", "4")
    two = fast_args(tmp_path, "two", *common, "--sample-batch-size", "2", "--ppo.train-batch-size", "2")
    _one_and_two(one, two, launcher="accelerate")
    a, b = (load_file(tmp_path / n / "checkpoints" / "latest" / "trainable.safetensors") for n in ("one", "two"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    (m1,), (m2,) = logged_metrics(tmp_path / "one"), logged_metrics(tmp_path / "two")
    assert m1["reward_queries"] == m2["reward_queries"] == 4  # counted over both processes
    for key in ("reward_mean", "reward_std", "grad_norm", "loss"):
        assert abs(m1[key] - m2[key]) <= 1e-5 * max(1.0, abs(m1[key])), key
    assert not (tmp_path / "two" / "checkpoints" / ".staging-epoch-0001").exists()


# The default preset's layout, scaled down: two sampling batches an epoch, four minibatches of the global batch
# (one optimizer step each, or two each with accumulation 2), so that every global minibatch mixes rows that the
# two processes sampled. A large Adam eps, as above, keeps rounding noise from being amplified, and so does a
# smooth reward: a JPEG size is an integer count of bytes, which a rounding difference in a pixel can change.
# groups: GRPO groups of 2; the cats' groups are left out of the update, by both processes alike. A group's
# gradient is a difference of two similar images' gradients: it keeps their rounding differences (sampling
# batches of 4 rather than 8) and loses most of its norm, so its gradient norm agrees to 1e-3 only.
_TWO_PROCESSES = ["--sample-batch-size", "4", "--ppo.train-batch-size", "2"]


def _layout_flags(layout: str, folder) -> list[str]:
    common = ["--batches-per-epoch", "2", "--adam-epsilon", "1"]
    if layout == "groups":
        (folder / "prompts.txt").write_text("a cat\na dog\na bee\n")
        common += ["--group-size", "2", "--reward", "smooth_rewards:mean_but_one_for_cats"]
        return common + ["--prompts", str(folder / "prompts.txt")]
    return common + ["--reward", "smooth_rewards:mean", "--ppo.gradient-accumulation-steps", layout.split()[-1]]


@pytest.fixture(scope="module")
def layout_runs(tmp_path_factory, plugins):
    """``layout_runs(layout)``: the folder holding its 3-epoch runs on one process ("one") and on two ("two"),
    trained once for the module (the resume test below continues a split copy of "accumulation 1"'s)."""
    runs = {}

    def get(layout: str):
        if layout not in runs:
            home = tmp_path_factory.mktemp("layout")
            common = [*_layout_flags(layout, home), "--epochs", "3"]
            one = fast_args(home, "one", *common, "--sample-batch-size", "8", "--ppo.train-batch-size", "4")
            two = fast_args(home, "two", *common, *_TWO_PROCESSES)
            _one_and_two(one, two, pythonpath=str(plugins))
            runs[layout] = home
        return runs[layout]

    return get


@pytest.mark.parametrize("layout", ["accumulation 1", "accumulation 2", "groups"])
def test_two_processes_follow_one_process_over_several_minibatches_and_epochs(layout_runs, layout):
    home = layout_runs(layout)
    single, double = logged_metrics(home / "one"), logged_metrics(home / "two")
    assert [m["epoch"] for m in single] == [m["epoch"] for m in double] == [1, 2, 3]
    tolerance = 1e-3 if layout == "groups" else 1e-4
    for a, b in zip(single, double):
        for key in ("reward_mean", "loss", "grad_norm", "approx_kl", "clipfrac", "ratio_mean"):
            assert abs(a[key] - b[key]) <= tolerance * max(1.0, abs(a[key])), (a["epoch"], key, a[key], b[key])
    if layout == "groups":
        kept = [m["groups_kept_fraction"] for m in single]
        assert kept == [m["groups_kept_fraction"] for m in double] and min(kept) < 1, kept


def test_two_process_run_resumed_gives_the_uninterruptedlogged_metrics(layout_runs, plugins, tmp_path, capsys):
    straight = layout_runs("accumulation 1") / "two"  # 3 epochs on two processes, uninterrupted
    args = [*_layout_flags("accumulation 1", tmp_path), *_TWO_PROCESSES]
    assert _launch(2, fast_args(tmp_path, "split", *args, "--epochs", "1"), pythonpath=str(plugins)).returncode == 0
    proc = _launch(2, ["--resume", str(tmp_path / "split"), "--epochs", "3"], pythonpath=str(plugins))
    assert proc.returncode == 0, proc.stderr[-3000:]
    straight, split = logged_metrics(straight), logged_metrics(tmp_path / "split")
    assert [m["epoch"] for m in split] == [1, 2, 3]
    for a, b in zip(straight, split):
        assert (a["reward_mean"], a["loss"], a["reward_queries"]) == (b["reward_mean"], b["loss"], b["reward_queries"])
    # The same run on another number of processes would not be the same run.
    expect_error(capsys, ["--resume", str(tmp_path / "split"), "--epochs", "4"], "trained on 2 processes")


def test_a_process_that_dies_or_stalls_ends_the_run_with_an_error(tmp_path, plugins):
    args = ["--sample-batch-size", "2", "--ppo.train-batch-size", "2", "--process-timeout-s", "5"]
    runs = [("dies_on_rank_one", "genrl"), ("stalls_on_rank_one", "genrl"), ("dies_on_rank_one", "accelerate")]
    for reward, launcher in runs:
        run_args = fast_args(tmp_path, f"{reward}-{launcher}", *args, "--reward", f"failing_rewards:{reward}")
        # Not a hang: well within the timeout.
        proc = _launch(2, run_args, timeout=90, pythonpath=str(plugins), launcher=launcher)
        assert proc.returncode != 0
        assert "error: another process of this run stopped or stalled" in proc.stderr, proc.stderr[-3000:]
        if reward == "dies_on_rank_one":
            assert "error: reward 'failing_rewards:dies_on_rank_one' raised RuntimeError" in proc.stderr
        if launcher == "genrl":  # accelerate's launcher ends with ChildFailedError's traceback instead
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
            assert proc.stderr.strip().splitlines()[-1].startswith("error: the run stopped (process 0: ")


def test_a_reward_server_that_is_down_stops_every_process(tmp_path):
    url = f"http://127.0.0.1:{free_port()}?retries=2&backoff=0.01"  # nothing listens there
    args = fast_args(tmp_path, "r", "--sample-batch-size", "2", "--ppo.train-batch-size", "2", "--reward", url)
    proc = _launch(2, args, timeout=90)
    assert proc.returncode != 0
    # In one line, on each process that gets to it before the launcher stops it: one process's failure stops the rest.
    assert proc.stderr.count("error: reward server") in (1, 2), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error: the run stopped")
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()

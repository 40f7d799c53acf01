"""Launching a run on two processes (gloo on CPU) as a user does, and the one-process run it is compared with.

The multi-process tests are split over several files so that the test workers share them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from genrl.distributed import launch_command
from genrl.train import main
from tests.helpers import fast_args, logged_metrics

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


def reward_plugins(folder: Path):
    """Yields ``folder`` holding the rewards above, importable here and by the launched processes."""
    (folder / "smooth_rewards.py").write_text(SMOOTH_REWARDS)
    (folder / "failing_rewards.py").write_text(FAILING_REWARDS)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def launch(
    processes: int,
    args: list[str],
    timeout: float = 240,
    pythonpath: str | None = None,
    launcher: str = "genrl",
    wait: bool = True,
):
    """One process: plain ``python -m genrl.train``; several: ``python -m genrl.launch`` or ``accelerate launch``.
    ``wait=False``: the started process, to ``finish`` while this one does other work."""
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


def finish(proc: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
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


def one_and_two(one: list[str], two: list[str], pythonpath: str | None = None, launcher: str = "genrl") -> None:
    """The same run on one process and on two (launched), both to completion."""
    launched = launch(2, two, pythonpath=pythonpath, launcher=launcher, wait=False)
    try:
        _one_process_in_here(one)
    finally:
        proc = finish(launched)
    assert proc.returncode == 0, proc.stderr[-3000:]


# The default preset's layout, scaled down: two sampling batches an epoch, four minibatches of the global batch
# (one optimizer step each, or two each with accumulation 2), so that every global minibatch mixes rows that the
# two processes sampled. A large Adam eps keeps rounding noise from being amplified, and so does a smooth reward:
# a JPEG size is an integer count of bytes, which a rounding difference in a pixel can change.
# groups: GRPO groups of 2; the cats' groups are left out of the update, by both processes alike. A group's
# gradient is a difference of two similar images' gradients: it keeps their rounding differences (sampling
# batches of 4 rather than 8) and loses most of its norm, so its gradient norm agrees to 1e-3 only.
_TWO_PROCESSES = ["--sample-batch-size", "4", "--ppo.train-batch-size", "2"]


def _layout_flags(layout: str, folder: Path) -> list[str]:
    common = ["--batches-per-epoch", "2", "--adam-epsilon", "1"]
    if layout == "groups":
        (folder / "prompts.txt").write_text("a cat\na dog\na bee\n")
        common += ["--group-size", "2", "--reward", "smooth_rewards:mean_but_one_for_cats"]
        return common + ["--prompts", str(folder / "prompts.txt")]
    return common + ["--reward", "smooth_rewards:mean", "--ppo.gradient-accumulation-steps", layout.split()[-1]]


def train_layout(home: Path, layout: str, plugins: Path, *two_only: str, launcher: str = "genrl") -> Path:
    """``home`` holding the layout's 3-epoch runs on one process ("one") and on two ("two", with ``two_only``)."""
    common = [*_layout_flags(layout, home), "--epochs", "3"]
    one = fast_args(home, "one", *common, "--sample-batch-size", "8", "--ppo.train-batch-size", "4")
    two = fast_args(home, "two", *common, *_TWO_PROCESSES, *two_only)
    one_and_two(one, two, pythonpath=str(plugins), launcher=launcher)
    return home


def assert_two_follow_one(home: Path, layout: str) -> None:
    """The two-process run logs the one-process run's numbers, epoch by epoch."""
    single, double = logged_metrics(home / "one"), logged_metrics(home / "two")
    assert [m["epoch"] for m in single] == [m["epoch"] for m in double] == [1, 2, 3]
    tolerance = 1e-3 if layout == "groups" else 1e-4
    for a, b in zip(single, double):
        for key in ("reward_mean", "loss", "grad_norm", "approx_kl", "clipfrac", "ratio_mean"):
            assert abs(a[key] - b[key]) <= tolerance * max(1.0, abs(a[key])), (a["epoch"], key, a[key], b[key])
    if layout == "groups":
        kept = [m["groups_kept_fraction"] for m in single]
        assert kept == [m["groups_kept_fraction"] for m in double] and min(kept) < 1, kept


def stopped_after_epoch_one(run: Path, copy: Path) -> Path:
    """``copy``: ``run``, which saved a checkpoint every epoch, as it was when its first epoch had ended (its later
    checkpoints and records gone)."""
    shutil.copytree(run, copy, symlinks=True)
    for later in copy.glob("checkpoints/epoch-*"):
        if int(later.name.split("-")[1]) > 1:
            shutil.rmtree(later)
    (copy / "checkpoints" / "latest").unlink()
    first = [line for line in (copy / "metrics.jsonl").read_text().splitlines(True) if json.loads(line)["epoch"] <= 1]
    (copy / "metrics.jsonl").write_text("".join(first))
    return copy

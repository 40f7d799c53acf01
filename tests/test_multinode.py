"""Several machines, on this one: two ``accelerate launch`` commands with ``--num_machines 2``, one process each,
follow one process on the same global batch; a machine that never joins ends the other's ``genrl.launch`` in one line
within ``--process-timeout-s`` (torch's rendezvous waits 30 minutes by default)."""

import os
import subprocess
import sys
import threading
import time

import pytest

from genrl.distributed import free_port
from tests.helpers import fast_args, logged_metrics
from tests.launching import _one_process_in_here, finish

pytestmark = pytest.mark.usefixtures("tiny_lcm_built")  # tests/conftest.py

# tests/launching.py's accumulation layout, smaller: 2 epochs of one global sampling batch of 8, minibatches of 4 that
# mix both machines' rows (a large Adam eps and a smooth reward keep rounding differences from growing).
_LAYOUT = ["--adam-epsilon", "1", "--reward", "smooth_rewards:mean", "--epochs", "2"]


def _machine(rank: int, port: int, args: list[str], pythonpath: str, launcher: str = "accelerate"):
    """Machine ``rank`` of two, one process each, the main one listening on 127.0.0.1:``port``; started."""
    machines = ["--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"]
    if launcher == "accelerate":  # as a user types it
        launch = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", *machines]
        launch += ["--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]
        command = [sys.executable, "-m", *launch, "-m", "genrl.train", *args]
    else:
        command = [sys.executable, "-m", "genrl.launch", "--num_processes", "2", *machines]
        command += ["--main_process_port", str(port), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([pythonpath, os.getcwd()])
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_two_machines_follow_one_process_and_a_machine_that_never_joins_ends_the_other(tmp_path, reward_plugin_folder):
    plugins = str(reward_plugin_folder)
    # Machine 0 of a run whose machine 1 never starts: started first, so that its wait overlaps the run below.
    alone_args = fast_args(tmp_path, "alone", "--process-timeout-s", "5")
    alone = _machine(0, free_port(), alone_args, plugins, launcher="genrl")
    ended: list[float] = []
    started = time.monotonic()
    waiter = threading.Thread(target=lambda: ended.append((alone.wait(), time.monotonic() - started)[1]))
    waiter.start()

    port = free_port()
    two = fast_args(tmp_path, "two", *_LAYOUT, "--sample-batch-size", "4", "--ppo.train-batch-size", "2")
    machines = [_machine(rank, port, two, plugins) for rank in (0, 1)]
    one = fast_args(tmp_path, "one", *_LAYOUT, "--sample-batch-size", "8", "--ppo.train-batch-size", "4")
    try:
        _one_process_in_here(one)
    finally:
        done = [finish(machine, timeout=120) for machine in machines]
    assert [proc.returncode for proc in done] == [0, 0], done[0].stderr[-3000:] + done[1].stderr[-3000:]
    single, double = logged_metrics(tmp_path / "one"), logged_metrics(tmp_path / "two")
    assert [m["epoch"] for m in single] == [m["epoch"] for m in double] == [1, 2]
    assert [m["reward_queries"] for m in double] == [8, 16]  # both machines' images
    for a, b in zip(single, double):  # tests/launching.py's tolerance for this layout
        for key in ("reward_mean", "loss", "grad_norm", "approx_kl", "clipfrac", "ratio_mean"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (a["epoch"], key, a[key], b[key])

    waiter.join(timeout=60)
    assert ended, "a machine alone still waits for the other after 60 s"
    stderr = alone.stderr.read()
    assert alone.returncode == 1 and stderr.strip().count("\n") == 0, stderr[-3000:]
    assert stderr.startswith("error: the 2 machines did not all join the run within --process-timeout-s 5 ("), stderr
    assert ended[0] < 45, ended  # 5 s of waiting after the launcher's start-up, not torch's 30 minutes
    assert not (tmp_path / "alone").exists()  # no training process started


_MAIN = ["--main-process-ip", "127.0.0.1", "--main-process-port", "29500"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-machines", "2"], "needs the main machine's --main-process-ip and --main-process-port"),
        (["--num-machines", "2", "--machine-rank", "2", *_MAIN], "--machine-rank must be from 0 to 1, got 2"),
        (["--num-machines", "2", "--num-processes", "3", *_MAIN], "all 2 machines: a multiple of 2, got 3"),
    ],
)
def test_several_machines_misused_is_one_line(flags, message, capsys):
    from genrl.launch import main as launch

    with pytest.raises(SystemExit) as info:
        launch(flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_the_launchers_meet_within_the_process_timeout():
    from genrl.distributed import Machines, accelerate_args

    args = accelerate_args(4, "genrl.train", ["--epochs", "2"], Machines(2, 1, "10.0.0.1", 29500), 20.5)
    flags = dict(zip(args[1::2], args[2::2]))  # after --multi_gpu: flag, value pairs up to -m
    assert flags["--num_machines"] == "2" and flags["--machine_rank"] == "1" and flags["--num_processes"] == "4"
    assert (flags["--main_process_ip"], flags["--main_process_port"]) == ("10.0.0.1", "29500")
    assert flags["--rdzv_conf"] == "timeout=21"  # torch's static rendezvous: its TCP store's timeout, whole seconds

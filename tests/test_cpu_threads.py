"""The CPU thread count and how its threads wait (genrl/cpu.py): never chosen from the load, recorded with the run."""

import json
import os
import subprocess
import sys

import torch

import genrl.cpu as cpu
from genrl.train import main
from tests.helpers import fast_args, metrics_without_timings


def test_the_default_count_is_the_usable_cores_shared_among_this_machines_processes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 8)
    assert cpu.default_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # set by accelerate launch and torchrun
    assert cpu.default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert cpu.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    assert cpu.default_threads() == 3


def test_the_same_seed_gives_the_same_numbers_beside_a_busy_process(tmp_path, monkeypatch):
    # Before, the count was the cores left idle as the run started: 2 alone and 1 beside this loop on a 2-core
    # machine, and the float sums differed from the second epoch on.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    flags = ("--epochs", "2", "--eval-every", "2", "--eval-size", "4", "--seed", "3")
    main(fast_args(tmp_path, "alone", *flags))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        main(fast_args(tmp_path, "beside", *flags))
    finally:
        busy.kill()
        busy.wait()
    configs = [json.loads((tmp_path / name / "config.json").read_text()) for name in ("alone", "beside")]
    assert configs[0]["threads"] == configs[1]["threads"] == cpu.usable_cpus()
    alone, beside = (metrics_without_timings(tmp_path / name) for name in ("alone", "beside"))
    assert len(alone) == 3 and "eval_reward_mean" in alone[-1]  # epochs 0 (the evaluation before training), 1, 2
    assert alone == beside


def test_waiting_threads_spin_briefly_unless_the_user_says_otherwise():
    # libgomp reads its settings once, as torch loads it, and prints them with OMP_DISPLAY_ENV: importing genrl first
    # must have set them by then. Its own default spins 300000 rounds before a waiting thread sleeps.
    def spin_count(**env: str) -> str:
        base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        code = "import genrl, torch; torch.ones(4).sum()"
        run = subprocess.run(
            [sys.executable, "-c", code],
            env={**base, "OMP_DISPLAY_ENV": "VERBOSE", **env},
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        return next(line.split("=")[1].strip(" '") for line in run.stderr.splitlines() if "GOMP_SPINCOUNT" in line)

    assert spin_count() == str(cpu.SPIN_COUNT)
    assert spin_count(OMP_WAIT_POLICY="passive") == "0"
    assert spin_count(GOMP_SPINCOUNT="300000") == "300000"


def test_the_count_is_recorded_and_kept_on_resume(tmp_path):
    threads = torch.get_num_threads()
    main(fast_args(tmp_path, "r", "--epochs", "1", "--threads", "2", "--save-every", "1"))
    assert torch.get_num_threads() == threads  # restored after the run
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["threads"] == 2
    main(["--resume", str(tmp_path / "r"), "--epochs", "2"])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["threads"] == 2


def test_an_unset_count_is_chosen_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    main(fast_args(tmp_path, "r", "--epochs", "1"))
    assert json.loads((tmp_path / "r" / "config.json").read_text())["threads"] == 1

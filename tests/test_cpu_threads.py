"""The CPU thread count and how its threads wait (genrl/cpu.py): the count never chosen from the load and recorded
with the run; the spin at barriers shortened while other work is busy."""

import json
import os
import subprocess
import sys

import pytest
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_genrl_leaves_libgomps_spin_as_it_is():
    # libgomp reads its settings once, as torch loads it, and prints them with OMP_DISPLAY_ENV. genrl sets none of
    # them: its own default (300000 rounds) keeps an idle run fast, and SpinThrottle shortens it only under load.
    def spin_count(**env: str) -> str:
        base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        code = "import genrl.train, torch; torch.ones(4).sum()"
        run = subprocess.run(
            [sys.executable, "-c", code],
            env={**base, "OMP_DISPLAY_ENV": "VERBOSE", **env},
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        return next(line.split("=")[1].strip(" '") for line in run.stderr.splitlines() if "GOMP_SPINCOUNT" in line)

    assert spin_count() == "300000"
    assert spin_count(GOMP_SPINCOUNT="1000") == "1000"


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


_HOLD_AND_LET_GO = """
import json, os, sys, time, torch
import genrl.cpu as cpu
threads = lambda: len(os.listdir("/proc/self/task"))
cpu.LOOK_EVERY_S = 0.01
torch.set_num_threads(int(sys.argv[1]))
torch.ones(10**6).sum()  # the computing team exists before
computing, before = torch.get_num_threads(), threads()
spare = cpu.usable_cpus() - computing  # cores the computing team leaves to others
loads = iter([spare + x for x in [0.1, 0.0, 1.0, 0.2] + [0.0] * (cpu.QUIET_LOOKS - 1) + [0.5] + [0.0] * 10**6])
seen = []
throttle = cpu.SpinThrottle(other_load=lambda: seen.append(threads()) or next(loads))
with throttle:
    while len(seen) < 4 + cpu.QUIET_LOOKS + 2:
        torch.ones(10**6).sum()
for _ in range(100):  # the team's threads end as they are told, moments after
    if threads() == before:
        break
    time.sleep(0.01)
print(json.dumps(dict(applies=throttle.applies, seen=seen, before=before, after=threads(), cpus=cpu.usable_cpus(),
                      computing=computing, computing_after=torch.get_num_threads(), quiet=cpu.QUIET_LOOKS)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("computing", [1, 2])
def test_the_throttle_holds_a_team_of_its_own_while_others_are_busy_and_lets_it_go_when_they_are_quiet(computing):
    # In a process of its own, where no other thread comes or goes. Busy: more than the cores the computing team
    # leaves free (a run's other process on its share of the cores is not), by OVERSUBSCRIBED_BY (0.3).
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    script = [sys.executable, "-c", _HOLD_AND_LET_GO, str(computing)]
    run = subprocess.run(script, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout.splitlines()[-1])
    assert r["applies"]
    # Looks 1 and 2 quiet: nothing held. Look 3 busy: from then on, its thread and the team it started, one more
    # than the cores. Look 4 under the threshold, then quiet ones: let go after QUIET_LOOKS; busy again: held again.
    watching, held, quiet = r["before"] + 1, r["before"] + 2 + r["cpus"], r["quiet"]
    assert r["seen"][:3] == [watching] * 3
    assert r["seen"][3 : 3 + quiet] == [held] * quiet
    assert r["seen"][3 + quiet : 5 + quiet] == [watching, held]
    assert r["after"] == r["before"]  # stop let everything go (within a second)
    assert r["computing_after"] == r["computing"]  # the computing team is never touched


def test_the_throttle_leaves_a_users_wait_policy_alone(monkeypatch):
    for name, value in (("GOMP_SPINCOUNT", "300000"), ("OMP_WAIT_POLICY", "passive")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            throttle = cpu.SpinThrottle(other_load=lambda: 1.0)
            assert not throttle.applies
            threads = _threads()
            with throttle:
                assert _threads() == threads  # not even a watcher


@pytest.mark.slow
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

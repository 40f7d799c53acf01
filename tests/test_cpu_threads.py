"""The CPU thread count (genrl/cpu.py): one thread per core that other processes leave idle, recorded with the run."""

import json

import pytest
import torch

import genrl.cpu as cpu
from genrl.train import main
from tests.helpers import fast_args


def test_the_load_of_other_processes_is_the_busy_time_of_every_core_less_this_processs(monkeypatch):
    # 2 cores over 1 s: 150 of 200 jiffies busy is 1.5 cores; this process used 0.5 s of CPU: others kept 1 busy.
    clock = {"stat": (1000.0, 2000.0), "own": 10.0, "wall": 100.0}
    monkeypatch.setattr(cpu, "_cpu_times", lambda: clock["stat"])
    monkeypatch.setattr(cpu.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(cpu.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu, "usable_cpus", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    load = cpu.OtherLoad()
    clock.update(stat=(1150.0, 2200.0), own=10.5, wall=101.0)
    assert load.cores() == pytest.approx(1.0)
    assert cpu.default_threads(load) == 1
    clock.update(stat=(1050.0, 2200.0))  # only this process was busy: every core is free
    assert cpu.default_threads(load) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's setting wins
    assert cpu.default_threads(load) == 3


def test_proc_stat_is_read_as_busy_and_total_time():
    times = cpu._cpu_times()
    if times is None:
        pytest.skip("no /proc/stat here")
    busy, total = times
    assert 0 < busy <= total


def test_the_chosen_thread_count_is_recorded_and_kept_on_resume(tmp_path):
    threads = torch.get_num_threads()
    main(fast_args(tmp_path, "r", "--epochs", "1", "--threads", "2", "--save-every", "1"))
    assert torch.get_num_threads() == threads  # restored after the run
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["threads"] == 2
    main(["--resume", str(tmp_path / "r"), "--epochs", "2"])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["threads"] == 2


def test_an_unset_thread_count_is_chosen_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    main(fast_args(tmp_path, "r", "--epochs", "1"))
    assert json.loads((tmp_path / "r" / "config.json").read_text())["threads"] == 1

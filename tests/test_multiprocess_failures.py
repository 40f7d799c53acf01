"""One process of a launched run fails, stalls, or finds its reward server down: the whole run stops with one line."""

import pytest

from genrl.distributed import free_port
from tests.helpers import fast_args
from tests.launching import launch

pytestmark = pytest.mark.usefixtures("tiny_lcm_built")  # tests/conftest.py


# A process that dies under genrl.launch: the reward server's test below (the reward fails on every process).
@pytest.mark.slow
@pytest.mark.parametrize("reward, launcher", [("stalls_on_rank_one", "genrl"), ("dies_on_rank_one", "accelerate")])
def test_a_process_that_dies_or_stalls_ends_the_run_with_an_error(tmp_path, reward_plugin_folder, reward, launcher):
    args = ["--sample-batch-size", "2", "--ppo.train-batch-size", "2", "--process-timeout-s", "5"]
    run_args = fast_args(tmp_path, "run", *args, "--reward", f"failing_rewards:{reward}")
    proc = launch(2, run_args, timeout=90, pythonpath=str(reward_plugin_folder), launcher=launcher)  # not a hang
    assert proc.returncode != 0
    assert "error: another process of this run stopped or stalled" in proc.stderr, proc.stderr[-3000:]
    if reward == "dies_on_rank_one":
        assert "error: reward 'failing_rewards:dies_on_rank_one' raised RuntimeError" in proc.stderr
    if launcher == "genrl":  # accelerate's launcher ends with ChildFailedError's traceback instead
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("error: the run stopped (process 0: ")


@pytest.mark.slow
def test_a_reward_server_that_is_down_stops_every_process(tmp_path):
    url = f"http://127.0.0.1:{free_port()}?retries=2&backoff=0.01"  # nothing listens there
    args = fast_args(tmp_path, "r", "--sample-batch-size", "2", "--ppo.train-batch-size", "2", "--reward", url)
    proc = launch(2, args, timeout=90)
    assert proc.returncode != 0
    # In one line, on each process that gets to it before the launcher stops it: one process's failure stops the rest.
    assert proc.stderr.count("error: reward server") in (1, 2), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error: the run stopped")
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()


def test_a_process_group_that_cannot_form_is_the_same_one_line_stop(tmp_path, monkeypatch, capsys):
    # A process too slow to join its group's store within --process-timeout-s (a loaded machine, or one that never
    # starts) fails init_process_group before the group exists: one line, as a process lost later.
    import torch

    import genrl.train

    def never_joins(cfg):
        raise torch.distributed.DistStoreError("wait timeout after 5000ms, keys: /default_pg/0//cpu//0/1")

    monkeypatch.setattr(genrl.train, "train", never_joins)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as stop:
        genrl.train.main(fast_args(tmp_path, "r"))
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: another process of this run stopped or stalled (wait timeout after 5000ms")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: not a peer's failure, the traceback stays
    with pytest.raises(torch.distributed.DistStoreError):
        genrl.train.main(fast_args(tmp_path, "r"))

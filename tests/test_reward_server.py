"""The reward server and its client: a real HTTP server on 127.0.0.1, trained against, failing and stalling."""

import json
import threading
import time

import pytest
import torch

from genrl.errors import GenrlError
from genrl.rewards import load_reward
from genrl.rewards.base import CheckedReward
from genrl.rewards.serve import make_server
from genrl.train import main
from tests.helpers import fast_args


@pytest.fixture
def serve():
    servers = []

    def start(reward):
        server = make_server(
            reward if isinstance(reward, CheckedReward) else CheckedReward(reward, "test"), "127.0.0.1", 0
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_remote_reward_equals_the_local_one(serve):
    url = serve(load_reward("jpeg_incompressibility"))
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    remote, local = load_reward(url), load_reward("jpeg_incompressibility")
    torch.testing.assert_close(remote(images, ["a"] * 4, [{}] * 4), local(images, ["a"] * 4, [{}] * 4))


def test_training_against_a_server_gives_the_same_run(serve, tmp_path):
    url = serve(load_reward("jpeg_compressibility"))
    main(fast_args(tmp_path, "remote", "--reward", url))
    main(fast_args(tmp_path, "local", "--reward", "jpeg_compressibility"))
    read = lambda name: [
        json.loads(x)["reward_mean"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    ]
    assert read("remote") == read("local")


def test_a_failing_reward_reaches_the_client_as_one_line(serve):
    def broken(images, prompts, metadata):
        raise RuntimeError("out of memory")

    url = serve(broken)
    reward = load_reward(url + "?retries=2&backoff=0.01")
    with pytest.raises(GenrlError, match="failed 2 times .*raised RuntimeError: out of memory"):
        reward(torch.rand(2, 3, 8, 8), ["a", "b"], [{}, {}])


def test_a_stalled_server_times_out(serve):
    def slow(images, prompts, metadata):
        time.sleep(3)
        return [0.0] * len(prompts)

    url = serve(slow)
    reward = load_reward(url + "?timeout=0.3&retries=2&backoff=0.01")
    start = time.perf_counter()
    with pytest.raises(GenrlError, match="failed 2 times \\(timed out\\)"):
        reward(torch.rand(1, 3, 8, 8), ["a"], [{}])
    assert time.perf_counter() - start < 3


def test_an_unreachable_server_stops_training_before_it_starts(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit) as info:
        main(fast_args(tmp_path, "r", "--reward", f"http://127.0.0.1:{port}?retries=2&backoff=0.01"))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: reward server") and "python -m genrl.rewards.serve" in err
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()


def test_bad_settings_in_the_url():
    with pytest.raises(GenrlError, match="unknown settings \\['speed'\\]"):
        load_reward("http://127.0.0.1:1?speed=3")


def test_training_against_a_failing_server_ends_in_one_line(serve, tmp_path, capsys):
    def broken(images, prompts, metadata):
        raise RuntimeError("CUDA error: device-side assert")

    url = serve(broken) + "?retries=2&backoff=0.01"
    with pytest.raises(SystemExit) as info:
        main(fast_args(tmp_path, "r", "--reward", url, "--async-rewards"))
    assert info.value.code == 2
    err = capsys.readouterr().err  # the in-process server logs its requests there too
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: reward server") and "raised RuntimeError: CUDA error" in line
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()

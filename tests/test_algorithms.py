"""Algorithms plug in like rewards: ``--algo module:Class`` or an entry point, checked in one line."""

import json
from dataclasses import dataclass
from importlib.metadata import EntryPoint

import pytest
import torch
from safetensors.torch import load_file

import genrl.algos.base as algos_base
from genrl.algos.common import policy_gradient_buffer
from genrl.train import main
from tests.helpers import expect_error, fast_args, logged_metrics


@dataclass
class SignConfig:
    max_grad_norm: float = 123.0  # a TrainConfig field: filled from the run's configuration
    scale: float = 1.0  # not one: keeps its default


class SignOfAdvantage:
    """A toy algorithm written against genrl's public pieces only: REINFORCE on the sign of the advantage, one
    optimizer step an epoch."""

    Config = SignConfig

    def __init__(self, config: SignConfig):
        self.config = config

    def update(self, policy, optimizer, batch):
        buffer, stats = policy_gradient_buffer(batch)
        losses = []
        for chunks in buffer.minibatches(len(buffer), 1, batch.generator):
            for chunk in chunks:
                log_prob = policy.action_log_prob(policy.distribution(chunk.obs), chunk.next_latents)
                loss = -self.config.scale * (chunk.advantages.sign() * log_prob).mean() / len(chunks)
                loss.backward()
                losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), self.config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        return {**stats, "loss": sum(losses), "max_grad_norm_seen": self.config.max_grad_norm}


class WithoutUpdate:
    pass


class ReturnsAList(SignOfAdvantage):
    def update(self, policy, optimizer, batch):
        super().update(policy, optimizer, batch)
        return [1.0]


def test_a_user_algorithm_trains_from_the_command_line(tmp_path):
    algo = "tests.test_algorithms:SignOfAdvantage"
    main(fast_args(tmp_path, "r", "--algo", algo, "--max-grad-norm", "0.5", "--save-every", "1"))
    run = tmp_path / "r"
    metrics = logged_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(m["max_grad_norm_seen"] == 0.5 for m in metrics)  # its Config filled from the flags
    first, second = (load_file(run / "checkpoints" / f"epoch-000{e}" / "trainable.safetensors") for e in (1, 2))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # its update moved the weights
    assert json.loads((run / "config.json").read_text())["algo"] == algo


def test_an_entry_point_names_an_algorithm(tmp_path, monkeypatch):
    point = EntryPoint("sign", "tests.test_algorithms:SignOfAdvantage", "genrl.algorithms")
    monkeypatch.setattr(algos_base, "entry_points", lambda group: [point] if group == "genrl.algorithms" else [])
    main(fast_args(tmp_path, "r", "--algo", "sign", "--epochs", "1"))
    assert "max_grad_norm_seen" in logged_metrics(tmp_path / "r")[0]


@pytest.mark.parametrize(
    "algo,message",
    [
        ("nope", "unknown algorithm 'nope'; use one of ppo, reinforce, dpg"),
        ("no_such_module:Algo", "cannot import module 'no_such_module'"),
        ("tests.test_algorithms:Missing", "has no 'Missing'"),
        ("tests.test_algorithms:WithoutUpdate", "is not a class with an update(policy, optimizer, batch) method"),
        ("tests.test_algorithms:ReturnsAList", "update returned list; return a dict of floats"),
    ],
)
def test_a_bad_algorithm_is_one_line(tmp_path, capsys, algo, message):
    expect_error(capsys, fast_args(tmp_path, "r", "--algo", algo), message)
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()


def test_asking_for_the_advantages_twice_updates_the_statistics_once():
    from genrl.algos.base import EpochBatch

    calls = []
    batch = EpochBatch(
        batches=[],
        sampler=None,
        advantages_of=lambda rewards: calls.append(len(rewards)) or rewards - rewards.mean(),
        processes=type("One", (), {"gather": staticmethod(lambda t: t)})(),
        generator=torch.Generator(),
    )
    batch.rollouts.append(type("R", (), {"resolve": lambda self: self, "rewards": torch.tensor([1.0, 3.0])})())
    torch.testing.assert_close(batch.advantages(), torch.tensor([-1.0, 1.0]))
    batch.advantages()
    assert calls == [2]

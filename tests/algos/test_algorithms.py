"""Algorithms plug in like rewards: ``--algo module:Class`` or an entry point, checked in one line."""

import json
from dataclasses import dataclass
from importlib.metadata import EntryPoint

import pytest
import torch
from safetensors.torch import load_file

import genrl.algos.registry as algos_registry
from genrl.algos.common import sample_epoch
from genrl.train import main, parse_config
from tests.helpers import expect_error, fast_args, logged_metrics


@dataclass
class SignConfig:
    max_grad_norm: float = 123.0
    """Gradient clip of the toy algorithm."""
    beta: float = 0.1
    """A setting no built-in algorithm has: scales the loss."""


class SignOfAdvantage:
    """A toy algorithm written against genrl's public pieces only: REINFORCE on the sign of the advantage, one
    optimizer step an epoch."""

    Config = SignConfig

    def __init__(self, config: SignConfig):
        self.config = config

    def update(self, policy, optimizer, batch):
        buffer, stats = sample_epoch(batch)
        losses = []
        for chunks in buffer.minibatches(len(buffer), 1, batch.generator):
            for chunk in chunks:
                log_prob = policy.action_log_prob(policy.distribution(chunk.obs), chunk.next_latents)
                loss = -self.config.beta * (chunk.advantages.sign() * log_prob).mean() / len(chunks)
                loss.backward()
                losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), self.config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        return {**stats, "loss": sum(losses), "max_grad_norm_seen": self.config.max_grad_norm, "beta": self.config.beta}


class WithoutUpdate:
    pass


class ReturnsAList(SignOfAdvantage):
    def update(self, policy, optimizer, batch):
        super().update(policy, optimizer, batch)
        return [1.0]


class Epochs(SignOfAdvantage):  # its settings would be config.json's "epochs", over the run's field
    pass


class Algo(SignOfAdvantage):
    pass


@pytest.mark.parametrize("name,field", [("Epochs", "epochs"), ("Algo", "algo")])
def test_an_algorithm_whose_settings_would_overwrite_a_run_field_is_refused(tmp_path, capsys, name, field):
    line = expect_error(
        capsys,
        fast_args(tmp_path, "r", "--algo", f"tests.algos.test_algorithms:{name}"),
        f"settings would be named '{field}'",
    )
    assert "rename the class" in line
    assert not (tmp_path / "r").exists()


def test_a_user_algorithm_owns_its_settings_from_the_command_line_to_the_resume(tmp_path):
    algo = "tests.algos.test_algorithms:SignOfAdvantage"
    flags = ["--sign-of-advantage.beta", "0.25", "--sign-of-advantage.max-grad-norm", "0.5"]
    main(fast_args(tmp_path, "r", "--algo", algo, *flags, "--save-every", "1", "--epochs", "1"))
    run = tmp_path / "r"
    config = json.loads((run / "config.json").read_text())
    assert config["algo"] == algo and config["sign_of_advantage"] == {"max_grad_norm": 0.5, "beta": 0.25}
    main(["--resume", str(run), "--epochs", "2"])  # restored from config.json, not the defaults
    metrics = logged_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(m["max_grad_norm_seen"] == 0.5 and m["beta"] == 0.25 for m in metrics)
    first, second = (load_file(run / "checkpoints" / f"epoch-000{e}" / "trainable.safetensors") for e in (1, 2))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # its update moved the weights


def test_help_lists_a_plug_ins_own_settings_with_their_docstrings(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--algo", "tests.algos.test_algorithms:SignOfAdvantage", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--sign-of-advantage.beta FLOAT" in text and "A setting no built-in algorithm has" in text
    assert "--ppo.clip-range FLOAT" not in text


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--ppo.clip-rang", "0.1"], "unknown flag --ppo.clip-rang (with --algo ppo); did you mean --ppo.clip-range?"),
        (["--algo", "dpg", "--ppo.clip-range", "0.1"], "unknown flag --ppo.clip-range (with --algo dpg)"),
        (["--clip-range", "0.1"], "unknown flag --clip-range (with --algo ppo); did you mean --ppo.clip-range?"),
    ],
)
def test_a_misspelt_or_foreign_algorithm_flag_is_one_line(tmp_path, capsys, flags, message):
    expect_error(capsys, fast_args(tmp_path, "r", *flags), message)


def test_each_setting_has_one_default_and_presets_set_algorithm_fields():
    from genrl.algos.ppo import PPOConfig
    from genrl.config import TrainConfig
    from genrl.presets import PRESETS

    assert TrainConfig().algo_config == PPOConfig()  # the algorithm's class holds its defaults, nowhere else
    assert not any(hasattr(TrainConfig(), name) for name in ("clip_range", "train_batch_size", "dpg_truncation"))
    assert PRESETS["ddpo-compression"].algo_config.clip_range == 1e-4
    assert PRESETS["ddpo-compression"].algo_config.max_grad_norm == 1.0


def test_an_entry_point_names_an_algorithm(tmp_path, monkeypatch):
    point = EntryPoint("sign", "tests.algos.test_algorithms:SignOfAdvantage", "genrl.algorithms")
    monkeypatch.setattr(algos_registry, "entry_points", lambda group: [point] if group == "genrl.algorithms" else [])
    main(fast_args(tmp_path, "r", "--algo", "sign", "--epochs", "1"))
    assert "max_grad_norm_seen" in logged_metrics(tmp_path / "r")[0]


@pytest.mark.parametrize(
    "algo,message",
    [
        ("nope", "unknown algorithm 'nope'; use one of ppo, reinforce, dpg"),
        ("no_such_module:Algo", "cannot import module 'no_such_module'"),
        ("tests.algos.test_algorithms:Missing", "has no 'Missing'"),
        ("tests.algos.test_algorithms:WithoutUpdate", "is not a class with an update(policy, optimizer, batch) method"),
        ("tests.algos.test_algorithms:ReturnsAList", "update returned list; return a dict of floats"),
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

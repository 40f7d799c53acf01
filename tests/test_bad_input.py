"""Bad flags, prompt files and plug-ins are one line that names the problem and the fix, exit 2, before any work
(issue 25, findings 4-6)."""

import sys
from importlib.metadata import EntryPoint

import pytest
import torch

import genrl.algos.registry as algos_registry
import genrl.rewards.registry as reward_registry
from genrl.algos.ppo import PPO
from genrl.errors import GenrlError
from genrl.rewards import load_reward
from genrl.rundir import MAX_CAPTION_LINES, image_grid
from tests.helpers import expect_error, fast_args


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--adam-beta1", "1.5"], "--adam-beta1 must be in [0, 1), got 1.5"),
        (["--adam-beta2", "-1"], "--adam-beta2 must be in [0, 1), got -1"),
        (["--adam-epsilon", "-1"], "--adam-epsilon must be positive"),
        (["--adam-weight-decay", "-1"], "--adam-weight-decay 0 or more"),
        (["--seed", "-1"], "--seed must be a whole number from 0"),
        (["--threads", "0"], "--threads must be from 1 to 512"),
        (["--threads", "100000"], "--threads must be from 1 to 512"),  # was a Rust panic at the thread limit
        (["--finetune", "lora", "--lora-target-modules", "nope"], "--lora-target-modules nope: Target modules"),
        (["--lora-target-modules"], "--lora-target-modules needs at least one layer name"),
    ],
)
def test_bad_flags_are_one_line_and_nothing_is_written(tmp_path, capsys, flags, message):
    expect_error(capsys, fast_args(tmp_path, "r", *flags), message)
    assert not (tmp_path / "r" / "config.json").exists()


# --- prompts of any length --------------------------------------------------------------------------------------
def test_a_megabyte_prompt_line_is_refused_before_any_work(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n" + "a" * 1_000_000 + "\n")
    line = expect_error(capsys, fast_args(tmp_path, "r", "--prompts", str(prompts)), "prompt 2 is 1000000 characters")
    assert "over the limit" in line


def test_a_sample_grid_caption_is_cut_to_a_few_lines():
    images = torch.rand(2, 3, 32, 32)
    grid = image_grid(images, ["a" * 100_000, "short"])
    assert grid.height <= 32 + 11 * MAX_CAPTION_LINES + 1


# --- plug-ins: whatever goes wrong in the user's code is one line that names it ----------------------------------
class ExitsInUpdate:
    def update(self, policy, optimizer, batch):
        sys.exit(0)


class SamplesNothing:
    def update(self, policy, optimizer, batch):
        return {}


class FailsInUpdate:
    def update(self, policy, optimizer, batch):
        raise ValueError("my bug")


class FailsInInit(PPO):  # with PPO's settings: built from them
    def __init__(self, config):
        raise RuntimeError("cannot start")


class FailsInValidate(SamplesNothing):
    def validate(self, run):
        raise ValueError("beta must be positive")


@pytest.mark.parametrize(
    "algo,message",
    [
        (
            "tests.test_bad_input:ExitsInUpdate",
            "ExitsInUpdate' update raised SystemExit",
        ),
        ("tests.test_bad_input:SamplesNothing", "update sampled nothing"),
        ("tests.test_bad_input:FailsInUpdate", "update raised ValueError: my bug; fix the algorithm"),
        ("tests.test_bad_input:FailsInInit", "could not be built: it raised RuntimeError: cannot start"),
        ("tests.test_bad_input:FailsInValidate", "FailsInValidate' refused the settings: ValueError: beta must be"),
        (":Foo", "algorithm ':Foo' names no module"),
        ("tests.test_bad_input:", "names no object"),
        ("tests.broken_on_import:Thing", "importing 'tests.broken_on_import' raised ZeroDivisionError"),
    ],
)
def test_a_failing_algorithm_plug_in_is_one_line_that_names_it(tmp_path, capsys, monkeypatch, algo, message):
    if "broken_on_import" in algo:
        (tmp_path / "broken_plugin").mkdir()
        (tmp_path / "broken_plugin" / "broken_on_import.py").write_text("1 / 0\n")
        monkeypatch.syspath_prepend(str(tmp_path / "broken_plugin"))
        algo = algo.replace("tests.", "")
        message = message.replace("tests.", "")
    expect_error(capsys, fast_args(tmp_path, "r", "--algo", algo, "--epochs", "1"), message)
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()


@pytest.mark.parametrize("value", ["no_such_module:Algo", "genrl.algos.ppo:NoSuchClass"])
def test_an_algorithm_entry_point_that_cannot_load_is_one_line(tmp_path, capsys, monkeypatch, value):
    point = EntryPoint("broken", value, "genrl.algorithms")
    monkeypatch.setattr(algos_registry, "entry_points", lambda group: [point] if group == "genrl.algorithms" else [])
    line = expect_error(capsys, fast_args(tmp_path, "r", "--algo", "broken"), "algorithm 'broken' (entry point")
    assert "cannot be loaded" in line and "reinstall the package" in line


@pytest.mark.parametrize("value", ["no_such_module:reward", "genrl.rewards.jpeg:no_such_reward"])
def test_a_reward_entry_point_that_cannot_load_is_one_line(monkeypatch, value):
    point = EntryPoint("broken", value, "genrl.rewards")
    monkeypatch.setattr(reward_registry, "entry_points", lambda group: [point] if group == "genrl.rewards" else [])
    with pytest.raises(GenrlError, match=r"reward 'broken' \(entry point .*\) cannot be loaded"):
        load_reward("broken")


def test_a_reward_factory_that_raises_is_one_line_that_names_it(tmp_path, monkeypatch):
    (tmp_path / "my_factory.py").write_text("def Broken(**options):\n    raise KeyError('weights')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(GenrlError, match=r"reward 'my_factory:Broken' could not be built: it raised KeyError"):
        load_reward("my_factory:Broken()")
    sys.modules.pop("my_factory", None)


@pytest.mark.parametrize("weight", ["nan", "inf", "1e400", "-inf"])
def test_non_finite_composite_weights_are_refused_before_sampling(tmp_path, capsys, weight):
    reward = f"jpeg_compressibility={weight},jpeg_incompressibility=1"
    expect_error(capsys, fast_args(tmp_path, "r", "--reward", reward), "is not a finite number")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()

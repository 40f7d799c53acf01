"""--keep-best and --early-stop-patience: the best evaluation is the highest eval reward among those that keep
--accuracy-floor of the starting prompt accuracy (genrl/best.py)."""

import pytest
import torch
from safetensors.torch import load_file

import genrl.train
from genrl.best import BestEvaluation
from genrl.train import main
from tests.helpers import expect_error, fast_args, logged_metrics


def _evaluations(*points):
    return [{"epoch": e, "eval_reward_mean": r, "eval_prompt_accuracy": a} for e, (r, a) in enumerate(points)]


def test_the_best_evaluation_keeps_the_floor_of_the_starting_accuracy():
    history = _evaluations((-1.0, 0.8), (-0.9, 0.75), (-0.5, 0.5), (-0.8, 0.64), (-0.85, 0.8))
    best = BestEvaluation.replay(0.8, history)
    # -0.5 is the highest reward but keeps 0.5 / 0.8 of the accuracy; 0.64 is exactly the floor.
    assert (best.epoch, best.reward, best.accuracy, best.since_best) == (3, -0.8, 0.64, 1)
    assert BestEvaluation.replay(0.0, history).epoch == 2  # no floor: the highest reward
    assert BestEvaluation.replay(1.0, history).epoch == 4  # the only one that kept all of it
    unmeasured = [{"epoch": e, "eval_reward_mean": r} for e, r in enumerate([-1.0, -0.5, -0.7])]
    assert BestEvaluation.replay(0.8, unmeasured).epoch == 1  # prompts outside the shapes world: every one counts


@pytest.fixture
def scripted_evaluations(monkeypatch):
    """The evaluations report the given (reward, accuracy) in turn, the first at epoch 0."""

    real = genrl.train.evaluate

    def script(*points):
        queue = list(points)

        def evaluate(t):
            metrics, shown = real(t)
            reward, accuracy = queue.pop(0)
            return {**metrics, "eval_reward_mean": reward, "eval_prompt_accuracy": accuracy}, shown

        monkeypatch.setattr(genrl.train, "evaluate", evaluate)

    return script


_BEST_AT_3 = [(-1.0, 0.8), (-0.9, 0.75), (-0.5, 0.5), (-0.8, 0.64), (-0.85, 0.8), (-0.7, 0.6)]
_EVERY_EPOCH = ["--eval-every", "1", "--eval-size", "4", "--epochs", "5"]


@pytest.mark.slow
def test_keep_best_keeps_the_best_checkpoint_past_pruning_and_a_resume(tmp_path, scripted_evaluations, capsys):
    scripted_evaluations(*_BEST_AT_3)
    main(fast_args(tmp_path, "all", *_EVERY_EPOCH, "--save-every", "1", "--keep-checkpoints", "9"))
    scripted_evaluations(*_BEST_AT_3)
    kept = ["--keep-best", "--save-every", "10", "--keep-checkpoints", "1"]
    main(fast_args(tmp_path, "best", *_EVERY_EPOCH, *kept, "--epochs", "4"))
    assert "best: epoch 3: eval_reward_mean -0.8000, prompt accuracy 0.6400" in capsys.readouterr().out
    scripted_evaluations(*_BEST_AT_3[5:])
    main(["--resume", str(tmp_path / "best"), "--epochs", "5"])  # the best is replayed from metrics.jsonl
    checkpoints = tmp_path / "best" / "checkpoints"
    assert (checkpoints / "best").resolve().name == "epoch-0003"  # kept by pruning: only 1 checkpoint besides
    assert sorted(p.name for p in checkpoints.glob("epoch-*")) == ["epoch-0003", "epoch-0005"]
    weights = load_file(checkpoints / "best" / "trainable.safetensors")
    reference = load_file(tmp_path / "all" / "checkpoints" / "epoch-0003" / "trainable.safetensors")
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in weights)


@pytest.mark.slow
def test_the_untrained_model_is_kept_when_no_evaluation_keeps_the_picture(tmp_path, scripted_evaluations):
    scripted_evaluations((-1.0, 0.8), (-0.5, 0.2), (-0.6, 0.3))
    main(fast_args(tmp_path, "r", "--eval-every", "1", "--eval-size", "4", "--keep-best"))
    assert (tmp_path / "r" / "checkpoints" / "best").resolve().name == "epoch-0000"


@pytest.mark.slow
def test_early_stopping_ends_the_run_after_patience_evaluations_without_a_better_one(tmp_path, scripted_evaluations):
    scripted_evaluations((-1.0, 0.8), (-0.9, 0.8), (-0.5, 0.1), (-0.95, 0.8), (-0.8, 0.8))
    main(fast_args(tmp_path, "r", *_EVERY_EPOCH, "--early-stop-patience", "2", "--save-every", "10"))
    assert [m["epoch"] for m in logged_metrics(tmp_path / "r")] == [0, 1, 2, 3]
    assert (tmp_path / "r" / "checkpoints" / "latest").resolve().name == "epoch-0003"  # saved where it stopped


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--keep-best", "--eval-every", "0"], "--keep-best picks among evaluations: add --eval-every N"),
        (["--early-stop-patience", "3", "--eval-every", "0"], "--early-stop-patience picks among evaluations"),
        (["--accuracy-floor", "1.5"], "--accuracy-floor must be in [0, 1]"),
    ],
)
def test_bad_selection_flags_are_one_line(tmp_path, capsys, flags, message):
    expect_error(capsys, fast_args(tmp_path, "r", *flags), message)

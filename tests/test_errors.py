"""Every mistake a user can make: a one-line error naming the problem and the fix, exit 2, no traceback,
and no checkpoint left behind that a later --resume would trust. (In this process; what a real process prints is
tests/test_reliability.py's two runs started together.)"""

import pytest

from genrl.train import main
from tests.helpers import expect_error, fast_args


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "bad_rewards.py").write_text(
        "import torch\n"
        "def raises(images, prompts, metadata):\n    raise RuntimeError('model server fell over')\n"
        "def nan(images, prompts, metadata):\n    return torch.full((len(prompts),), float('nan'))\n"
        "def wrong_shape(images, prompts, metadata):\n    return torch.zeros(len(prompts), 2)\n"
        "def meta(images, prompts, metadata):\n    return torch.empty(len(prompts), device='meta')\n"
        "def huge(images, prompts, metadata):\n    return torch.full((len(prompts),), 1e38)\n"
        "def exits(images, prompts, metadata):\n    raise SystemExit('lost the licence server')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--reward", "beauty"], "unknown reward 'beauty'"),
        (["--preset", "rlcm-everything"], "unknown preset 'rlcm-everything'"),
        (["--prompts", "/no/such/prompts.txt"], "neither a built-in set"),
        (["--model", "/no/such/model"], "no such folder"),
        (["--model", "someone/not-downloaded"], "not in the local cache and HF_HUB_OFFLINE is set"),
        (["--ppo.train-batch-size", "3"], "--ppo.train-batch-size 3 must divide the 4 samples"),
        (["--num-steps", "1"], "no stochastic step"),
        (["--num-steps", "51"], "use 1 to 50"),
        (["--learning-rate", "0"], "--learning-rate must be positive"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--env", "ddpm", "--eta", "0"], "--eta 0.0 makes DDIM deterministic"),
        (["--env", "lcm", "--model", "TINY_SD"], "(sd adapter), and the lcm sampler needs a latent consistency model"),
        (["--algo", "dpg"], "--algo dpg needs a differentiable reward"),
        (["--algo", "dpg", "--async-rewards"], "--async-rewards cannot carry a reward's gradient"),
        (["--algo", "dpg", "--dpg.truncation", "4"], "--dpg.truncation must be between 1 and --num-steps 3"),
        (["--ppo.kl-coef", "0.1"], "--ppo.kl-coef needs --finetune lora"),
        (["--group-size", "3"], "--group-size 3 must be at least 1 and divide --sample-batch-size 4"),
        (["--ema-decay", "1"], "--ema-decay must be in [0, 1)"),
        (["--eval-size", "6"], "--eval-size a positive multiple of --sample-batch-size 4"),
        (["--env", "ddpm", "--noise-last-step"], "--noise-last-step is a setting of the lcm sampler"),
    ],
)
def test_bad_configuration(tmp_path, capsys, extra, message):
    if "TINY_SD" in extra:
        from genrl.shapes.tiny import tiny_pipeline_dir

        extra = [str(tiny_pipeline_dir(lcm=False)) if e == "TINY_SD" else e for e in extra]
    expect_error(capsys, fast_args(tmp_path, "r", *extra), message)
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()


def test_empty_prompt_file(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("\n  \n")
    expect_error(capsys, fast_args(tmp_path, "r", "--prompts", str(tmp_path / "p.txt")), "has no prompts")


def test_model_folder_without_a_pipeline(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    expect_error(capsys, fast_args(tmp_path, "r", "--model", str(tmp_path / "m")), "no model_index.json")


@pytest.mark.parametrize(
    "reward,message",
    [
        ("bad_rewards:raises", "raised RuntimeError: model server fell over"),
        ("bad_rewards:nan", "returned NaN for 4 of 4 images"),
        ("bad_rewards:wrong_shape", "returned shape (4, 2) for 4 images"),
        ("bad_rewards:meta", "reward 'bad_rewards:meta' returned a tensor on the meta device"),
        ("bad_rewards:huge", "reward 'bad_rewards:huge' returned 1e+38 for 4 of 4 images, over 1e+15"),
        ("bad_rewards:exits", "reward 'bad_rewards:exits' raised SystemExit: lost the licence server; fix the reward"),
    ],
)
def test_bad_reward_leaves_no_checkpoint(tmp_path, capsys, plugin, reward, message):
    expect_error(capsys, fast_args(tmp_path, "r", "--reward", reward), message)
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()
    with pytest.raises(SystemExit):  # a run stopped before its first checkpoint starts again, and fails again
        main(["--resume", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert "the run starts again from epoch 1" in err[0] and message in err[-1]


def test_resume_needs_a_run_directory(tmp_path, capsys):
    expect_error(capsys, ["--resume", str(tmp_path / "nothing")], "no config.json there")


def test_resume_refuses_a_different_model(tmp_path, capsys):
    main(fast_args(tmp_path, "r", "--epochs", "1"))
    expect_error(
        capsys, ["--resume", str(tmp_path / "r"), "--finetune", "lora"], "--finetune cannot change on --resume"
    )


def test_a_run_directory_is_not_overwritten(tmp_path, capsys):
    main(fast_args(tmp_path, "r", "--epochs", "1"))
    expect_error(capsys, fast_args(tmp_path, "r", "--epochs", "1"), "already holds a run")


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    import genrl.checkpoint as checkpoint

    main(fast_args(tmp_path, "r", "--epochs", "1"))
    real_save = checkpoint.torch.save

    def dying_save(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    capsys.readouterr()
    line = expect_error(capsys, ["--resume", str(tmp_path / "r"), "--epochs", "2"], "cannot write checkpoint")
    assert "No space left on device" in line and "--resume" in line
    monkeypatch.undo()
    checkpoints = tmp_path / "r" / "checkpoints"
    assert (checkpoints / "latest").resolve().name == "epoch-0001"
    assert not (checkpoints / "epoch-0002").exists()
    assert not list(checkpoints.glob(".staging-*"))  # nothing half-written is left behind
    main(["--resume", str(tmp_path / "r"), "--epochs", "2"])
    assert (checkpoints / "latest").resolve().name == "epoch-0002"

"""Nothing silently wrong: a diverged run stops, the run directory is locked, a run stopped before its first
checkpoint resumes from scratch, and every damaged input is one line naming the fix (exit 2, no traceback)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from genrl.rundir import RunDir, RunDirInUse
from genrl.train import main, parse_config, train
from tests.helpers import expect_error, fast_args, logged_metrics


# --- a run that diverges stops, and leaves nothing a resume would trust --------------------------------------
def test_a_diverging_run_stops_with_one_line_and_saves_nothing_of_it(tmp_path, capsys):
    line = expect_error(capsys, fast_args(tmp_path, "r", "--learning-rate", "3e3", "--epochs", "4"), "NaN or infinite")
    assert "--learning-rate 3000 is too high" in line
    diverged = int(line.split("epoch ")[1].split(":")[0])
    run = tmp_path / "r"
    assert [m["epoch"] for m in logged_metrics(run)] == list(range(1, diverged))  # the diverged epoch is not logged
    assert not (run / "checkpoints" / f"epoch-{diverged:04d}").exists()
    for checkpoint in (run / "checkpoints").glob("epoch-*"):
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "trainable.safetensors").values())


@pytest.mark.parametrize("flag,value", [("--learning-rate", "inf"), ("--guidance-scale", "nan"), ("--eta", "inf")])
def test_non_finite_numbers_are_refused(tmp_path, capsys, flag, value):
    expect_error(capsys, fast_args(tmp_path, "r", flag, value), f"{flag} must be a finite number")
    assert not (tmp_path / "r").exists()


def test_resume_refuses_a_checkpoint_with_non_finite_weights(tmp_path, capsys):
    main(fast_args(tmp_path, "r", "--epochs", "1"))
    path = tmp_path / "r" / "checkpoints" / "latest" / "trainable.safetensors"
    weights = load_file(path)
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, path)
    expect_error(capsys, ["--resume", str(tmp_path / "r"), "--epochs", "2"], "non-finite weights")


# --- the run directory belongs to one run at a time ---------------------------------------------------------
_HOLD_LOCK = (  # keeps the RunDir (and so its lock) alive until killed
    "import sys, time; from genrl.rundir import RunDir; run = RunDir(sys.argv[1]); run.lock(); "
    "print('locked', flush=True); time.sleep(60)"
)


@pytest.mark.slow
def test_a_run_directory_in_use_is_refused_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path / "r")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = expect_error(capsys, fast_args(tmp_path, "r", "--epochs", "1"), "is in use by another run")
        assert f"process {holder.pid}" in line
        assert not (tmp_path / "r" / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without any clean-up
        holder.wait()
    main(fast_args(tmp_path, "r", "--epochs", "1"))  # the dead process's lock is taken over
    assert [m["epoch"] for m in logged_metrics(tmp_path / "r")] == [1]


def test_the_lock_is_released_when_a_run_fails(tmp_path, capsys):
    expect_error(capsys, fast_args(tmp_path, "r", "--reward", "nope:missing"), "nope")
    run = RunDir(tmp_path / "r")
    run.lock()  # would raise if the failed run had kept it
    run.close()


@pytest.mark.slow
def test_two_runs_started_together_do_not_share_a_directory(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "genrl.train", *fast_args(tmp_path, "r", "--epochs", "3")]
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    time.sleep(0.5)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    first_err = first.communicate(timeout=300)[1]
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (first_err[-2000:], second.stderr[-2000:])
    # What a user sees of any error in a real process: exit 2, one line, no traceback.
    loser = second.stderr if second.returncode == 2 else first_err
    assert loser.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in loser
    assert [m["epoch"] for m in logged_metrics(tmp_path / "r")] == [1, 2, 3]


def test_a_run_directory_held_by_another_run_raises_run_dir_in_use(tmp_path):
    """Its own type, which a sweep's second process (``--from-end``) catches to skip the run the first one holds."""
    holder = RunDir(tmp_path / "r")
    holder.lock()  # another open of the lock file: refused as another process's would be
    try:
        with pytest.raises(RunDirInUse, match="is in use by another run"):
            train(parse_config(fast_args(tmp_path, "r")))
    finally:
        holder.close()
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


# --- a run stopped before its first checkpoint --------------------------------------------------------------
_INTERRUPTING_REWARD = """
import os, torch
calls = 0
def interrupts_at_epoch_two(images, prompts, metadata):
    global calls
    if os.environ.get("GENRL_TEST_INTERRUPT"):  # counts only the calls of the run to interrupt
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
    return images.mean(dim=(1, 2, 3))
"""


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_resumes_from_scratch(tmp_path, capsys, monkeypatch):
    (tmp_path / "interrupting.py").write_text(_INTERRUPTING_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["--reward", "interrupting:interrupts_at_epoch_two", "--save-every", "5", "--epochs", "3"]
    main(fast_args(tmp_path, "straight", *args))
    monkeypatch.setenv("GENRL_TEST_INTERRUPT", "1")
    with pytest.raises(SystemExit) as info:
        main(fast_args(tmp_path, "r", *args))
    assert info.value.code == 130
    monkeypatch.delenv("GENRL_TEST_INTERRUPT")
    run = tmp_path / "r"
    assert [m["epoch"] for m in logged_metrics(run)] == [1] and not (run / "checkpoints" / "latest").exists()
    capsys.readouterr()
    expect_error(capsys, fast_args(tmp_path, "r", *args), "already holds a run; pick another --run-name or --resume")
    main(["--resume", str(run)])
    assert "no checkpoint yet: the run starts again from epoch 1" in capsys.readouterr().err
    assert [m["reward_mean"] for m in logged_metrics(run)] == [
        m["reward_mean"] for m in logged_metrics(tmp_path / "straight")
    ]


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, capsys):
    main(fast_args(tmp_path, "r", "--epochs", "1"))
    run = tmp_path / "r"
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "reward_mea')  # the process died mid-write
    main(["--resume", str(run), "--epochs", "2"])
    assert "ends in a torn line; dropped it" in capsys.readouterr().err
    assert [m["epoch"] for m in logged_metrics(run)] == [1, 2]


# --- damaged input: one line naming the fix -----------------------------------------------------------------
def test_a_prompt_file_that_is_not_utf8(tmp_path, capsys):
    (tmp_path / "p.txt").write_bytes(b"a red circle\n\xff\xfe broken\n")
    expect_error(capsys, fast_args(tmp_path, "r", "--prompts", str(tmp_path / "p.txt")), "is not UTF-8 text")


def test_an_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    args = [*fast_args(tmp_path, "r"), "--output-dir", str(tmp_path / "file")]
    expect_error(capsys, args, "cannot create the run directory")


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--device", "bogus"], "--device 'bogus' is not a torch device"),
        (["--device", "cuda"], "no cuda device; use --device cpu"),
        (["--resolution", "37"], "resolution 37 must be a positive multiple of"),
        (["--resolution", "-8"], "--resolution must be a positive number of pixels"),
        (["--preset", "tiny-compression", "--lora-alpha", "2"], None),  # a new run may set anything
    ],
)
def test_bad_device_and_resolution(tmp_path, capsys, extra, message):
    if message is None:
        main(fast_args(tmp_path, "r", *extra, "--epochs", "1"))
        return
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    expect_error(capsys, fast_args(tmp_path, "r", *extra), message)


def _damage(run, how):
    checkpoint = run / "checkpoints" / "latest"
    weights = checkpoint / "trainable.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "wrong shape":
        tensors = load_file(weights)
        name = next(iter(tensors))
        tensors[name] = torch.zeros(3, 3)
        save_file(tensors, weights)
    elif how == "empty state":
        (checkpoint / "state.json").write_text("{}")
    elif how == "garbage config":
        (run / "config.json").write_text("{not json")
    elif how == "config lacks a field":
        config = json.loads((run / "config.json").read_text())
        del config["learning_rate"]
        (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "how,message",
    [
        ("truncated", "is unreadable"),
        ("empty", "is unreadable"),
        ("wrong shape", "of shape (3, 3), the model has"),
        ("empty state", "state.json has no 'counters' object"),
        ("garbage config", "config.json is unreadable"),
        ("config lacks a field", "config.json has no fields ['learning_rate']"),
    ],
)
def test_a_damaged_run_directory_is_refused_on_resume(tmp_path, capsys, how, message):
    main(fast_args(tmp_path, "r", "--epochs", "1"))
    _damage(tmp_path / "r", how)
    capsys.readouterr()
    expect_error(capsys, ["--resume", str(tmp_path / "r"), "--epochs", "2"], message)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--lora-alpha", "32"], "--lora-alpha cannot change on --resume"),
        (["--preset", "tiny-compression"], "--preset cannot change on --resume"),
    ],
)
def test_resume_keeps_the_adapter_and_the_preset(tmp_path, capsys, extra, message):
    main(fast_args(tmp_path, "r", "--epochs", "1", "--finetune", "lora"))
    capsys.readouterr()
    expect_error(capsys, ["--resume", str(tmp_path / "r"), "--epochs", "2", *extra], message)

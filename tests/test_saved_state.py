"""Nothing lost: --resume finds the newest checkpoint by epoch number whatever ``latest`` says, pruning orders by
number, every saved tensor is finite at save and at load, and every damaged saved file is one line (issue 25)."""

import contextlib
import errno
import json
import resource
import shutil
import signal
from pathlib import Path

import pytest
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from genrl.adapters import adapter_for
from genrl.checkpoint import checkpoint_epochs, save_checkpoint
from genrl.errors import GenrlError
from genrl.rundir import RunDir
from genrl.train import main
from tests.helpers import expect_error, fast_args, logged_metrics, tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run that saved after each epoch, per set of extra flags, trained once for the module."""
    runs: dict[tuple[str, ...], Path] = {}

    def get(extra: tuple[str, ...]) -> Path:
        if extra not in runs:
            home = tmp_path_factory.mktemp("trained")
            main(fast_args(home, "r", "--save-every", "1", *extra))
            runs[extra] = home / "r"
        return runs[extra]

    return get


@pytest.fixture
def _run(trained):
    """``_run(tmp_path, *flags)``: a copy in ``tmp_path`` of the trained run, for a test to damage."""

    def copy(tmp_path: Path, *extra: str) -> Path:
        shutil.copytree(trained(extra), tmp_path / "r", symlinks=True)
        return tmp_path / "r"

    return copy


def _resume(run: Path, epochs: int, *extra: str) -> None:
    main(["--resume", str(run), "--epochs", str(epochs), *extra])


# --- 1. resume never discards progress -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("latest", ["missing", "dangling", "a plain file", "a link to itself"])
def test_resume_continues_from_the_newest_checkpoint_whatever_latest_says(_run, tmp_path, latest):
    run = _run(tmp_path)
    link = run / "checkpoints" / "latest"
    link.unlink()
    if latest == "dangling":
        link.symlink_to("epoch-0042")
    elif latest == "a link to itself":  # resolving it is a symlink loop
        link.symlink_to("latest")
    elif latest == "a plain file":  # a copy that followed no symlinks
        link.write_text("epoch-0002")
    _resume(run, 3)
    assert [m["epoch"] for m in logged_metrics(run)] == [1, 2, 3]  # epochs 1-2 kept, not run again
    assert link.resolve().name == "epoch-0003"


def test_resume_takes_the_highest_epoch_even_when_latest_lags_behind(_run, tmp_path):
    run = _run(tmp_path)
    link = run / "checkpoints" / "latest"
    link.unlink()
    link.symlink_to("epoch-0001")  # a crash between renaming epoch-0002 into place and switching the link
    _resume(run, 3)
    assert [m["epoch"] for m in logged_metrics(run)] == [1, 2, 3]


def test_a_run_whose_checkpoints_are_all_damaged_is_refused_not_restarted(_run, tmp_path, capsys):
    run = _run(tmp_path)
    for _, folder in checkpoint_epochs(run / "checkpoints"):
        (folder / "optimizer.pt").unlink()
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    expect_error(capsys, ["--resume", str(run), "--epochs", "3"], "none complete")
    assert (run / "metrics.jsonl").read_text() == before


def test_pruning_orders_checkpoints_by_number_not_as_text(tmp_path):
    pipe = tiny()
    unet = pipe.unet.requires_grad_(True)
    adapter = adapter_for(pipe)
    optimizer = torch.optim.AdamW(unet.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    state = {"counters": {"epoch": 9999, "reward_queries": 0, "wall_time_s": 0.0}}
    checkpoints = tmp_path / "checkpoints"
    save_checkpoint(checkpoints, 9999, adapter, optimizer, scheduler, state, keep=1)
    save_checkpoint(checkpoints, 10000, adapter, optimizer, scheduler, state, keep=1)  # "epoch-10000" < "epoch-9999"
    assert [epoch for epoch, _ in checkpoint_epochs(checkpoints)] == [10000]
    assert (checkpoints / "latest").resolve().name == "epoch-10000"


# --- 2. every saved tensor is finite, at save and at load ------------------------------------------------------
def _poison_first(tensors: list) -> None:
    tensors[0].view(-1)[0] = float("nan")


@pytest.mark.slow
def test_a_non_finite_ema_state_is_refused_on_resume(_run, tmp_path, capsys):
    run = _run(tmp_path, "--ema-decay", "0.9")
    path = run / "checkpoints" / "latest" / "ema.pt"
    ema = torch.load(path, weights_only=True)
    _poison_first(ema["shadow_params"])
    torch.save(ema, path)
    capsys.readouterr()
    line = expect_error(capsys, ["--resume", str(run), "--epochs", "3"], "EMA state.shadow_params")
    assert "NaN or infinite" in line and "--learning-rate" not in line
    assert [m["epoch"] for m in logged_metrics(run)] == [1, 2]


def test_non_finite_optimizer_moments_are_refused_on_resume(_run, tmp_path, capsys):
    run = _run(tmp_path)
    path = run / "checkpoints" / "latest" / "optimizer.pt"
    extra = torch.load(path, weights_only=True)
    first = next(iter(extra["optimizer"]["state"].values()))
    first["exp_avg_sq"].view(-1)[0] = float("inf")
    torch.save(extra, path)
    capsys.readouterr()
    expect_error(capsys, ["--resume", str(run), "--epochs", "3"], "optimizer state.state")


def test_a_non_finite_scheduler_state_is_refused_on_resume(_run, tmp_path, capsys):
    run = _run(tmp_path)
    path = run / "checkpoints" / "latest" / "optimizer.pt"
    extra = torch.load(path, weights_only=True)
    extra["lr_scheduler"]["base_lrs"][0] = float("nan")  # the next epoch's learning rate
    torch.save(extra, path)
    capsys.readouterr()
    line = expect_error(capsys, ["--resume", str(run), "--epochs", "3"], "scheduler state.base_lrs[0]")
    assert "NaN or infinite" in line
    assert [m["epoch"] for m in logged_metrics(run)] == [1, 2]


def test_a_non_finite_ema_is_not_saved(tmp_path):
    pipe = tiny()
    unet = pipe.unet.requires_grad_(True)
    params = [p for p in unet.parameters() if p.requires_grad]
    ema = EMAModel(params, decay=0.9)
    _poison_first(ema.shadow_params)
    optimizer = torch.optim.AdamW(params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    state = {"counters": {"epoch": 1, "reward_queries": 0, "wall_time_s": 0.0}}
    with pytest.raises(GenrlError, match="EMA state.shadow_params"):
        save_checkpoint(tmp_path, 1, adapter_for(pipe), optimizer, scheduler, state, keep=2, ema=ema)
    assert not list(tmp_path.iterdir())  # nothing written, not even a staging folder


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16])
def test_trainable_weights_of_another_dtype_are_refused(_run, tmp_path, capsys, dtype):
    run = _run(tmp_path)
    path = run / "checkpoints" / "latest" / "trainable.safetensors"
    save_file({k: v.to(dtype) for k, v in load_file(path).items()}, path)
    capsys.readouterr()
    expect_error(capsys, ["--resume", str(run), "--epochs", "3"], f"as {dtype}, the model trains it as torch.float32")


@pytest.mark.parametrize("field,value", [("lora_alpha", 64.0), ("env", "ddpm")])
def test_an_edited_config_json_does_not_load_the_checkpoint_into_another_model(_run, tmp_path, capsys, field, value):
    run = _run(tmp_path, "--finetune", "lora", "--lora-alpha", "16")
    config = json.loads((run / "config.json").read_text())
    config[field] = value
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    expect_error(capsys, ["--resume", str(run), "--epochs", "3"], f"config.json has {field} {value!r}")


# --- 5. damaged saved files: one line, exit 2, nothing lost ----------------------------------------------------
@pytest.mark.parametrize(
    "field,value,message",
    [
        ("epochs", "abc", 'epochs is "abc", not a whole number'),
        ("output_dir", None, "output_dir is null, not a path"),
        ("reward", 5, "reward is 5, not a string"),
        ("learning_rate", "1e-3", 'learning_rate is "1e-3", not a number'),
        ("env", "gan", 'env is "gan", not one of "lcm", "ddpm"'),
        ("noise_last_step", "yes", "not true or false"),
        ("lora_target_modules", "to_q", "not a list of strings"),
        ("time_budget_s", [], "not a number or null"),
    ],
)
def test_a_config_json_of_wrong_types_is_one_line(_run, tmp_path, capsys, field, value, message):
    run = _run(tmp_path)
    config = json.loads((run / "config.json").read_text())
    config[field] = value
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    expect_error(capsys, ["--resume", str(run), "--epochs", "3"], message)
    assert [m["epoch"] for m in logged_metrics(run)] == [1, 2]


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda s: s["counters"].update(epoch="2"), "counters.epoch is '2', not a whole number"),
        (lambda s: s["counters"].update(epoch=1.5), "counters.epoch is 1.5"),
        (lambda s: s["counters"].update(epoch=-5), "counters.epoch is -5"),
        (lambda s: s["counters"].update(wall_time_s="abc"), "counters.wall_time_s is 'abc', not a number of seconds"),
        (lambda s: s.update(tracker={"history": 3}), "'tracker' that is not per-prompt statistics"),
        (lambda s: s.update(num_processes=0), "num_processes is 0"),
        # epoch-0002's state says epoch 1: every resume would go back to it, as no later folder outnumbers 0002
        (lambda s: s["counters"].update(epoch=1), "counters.epoch is 1, but the folder is epoch-0002"),
    ],
)
def test_a_state_json_of_wrong_types_is_one_line_before_any_training(_run, tmp_path, capsys, change, message):
    run = _run(tmp_path)
    path = run / "checkpoints" / "latest" / "state.json"
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))
    capsys.readouterr()
    expect_error(capsys, ["--resume", str(run), "--epochs", "3"], message)
    assert [m["epoch"] for m in logged_metrics(run)] == [1, 2]  # refused before an epoch ran


@pytest.mark.parametrize("scale", [1e-30, 0.0, -1.0, 1e300])
def test_an_fp16_loss_scale_out_of_range_is_refused_on_resume(_run, tmp_path, capsys, scale):
    """At a scale of 1e-30 every fp16 gradient underflows to 0: the run would train on, its gradient norm 0."""
    run = _run(tmp_path)
    path = run / "checkpoints" / "latest" / "state.json"
    state = json.loads(path.read_text())
    state["loss_scaling"] = {**torch.amp.GradScaler("cpu").state_dict(), "scale": scale}
    path.write_text(json.dumps(state))
    capsys.readouterr()
    resume = ["--resume", str(run), "--epochs", "3", "--mixed-precision", "fp16"]
    expect_error(capsys, resume, f"loss_scaling.scale is {scale!r}")
    assert [m["epoch"] for m in logged_metrics(run)] == [1, 2]


@pytest.mark.parametrize(
    "line,message",
    [
        ("{}", "epoch None is not a whole number"),
        ("[1, 2]", "a JSON list, not an object"),
        ("NaN", "a JSON float, not an object"),
        ('{"epoch": "x"}', "epoch 'x' is not a whole number"),
        ('{"epoch": 1, "reward_mean": "high"}', "'reward_mean' is high, not a number"),
    ],
)
def test_metrics_records_that_are_not_records_are_one_line(_run, tmp_path, capsys, line, message):
    run = _run(tmp_path)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([line, *lines]) + "\n")
    capsys.readouterr()
    error = expect_error(capsys, ["--resume", str(run), "--epochs", "3"], "metrics.jsonl line 1 is not an epoch's")
    assert message in error
    assert metrics.read_text().splitlines() == [line, *lines]


def test_a_metrics_file_that_is_a_folder_is_one_line(_run, tmp_path, capsys):
    run = _run(tmp_path)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    capsys.readouterr()
    expect_error(capsys, ["--resume", str(run), "--epochs", "3"], "metrics.jsonl is unreadable")


def test_a_write_that_fails_for_want_of_space_is_one_line(tmp_path, capsys, monkeypatch):
    def full_disk(self, metrics):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.metrics_path))

    monkeypatch.setattr(RunDir, "log_metrics", full_disk)
    line = expect_error(capsys, fast_args(tmp_path, "r", "--epochs", "1"), "metrics.jsonl (No space left on device)")
    assert "free disk space" in line and "--resume" in line


@contextlib.contextmanager
def _disk_taking_nothing_over(size: int):
    """In this process, a file cannot grow past ``size`` bytes: its write fails with EFBIG, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel's signal ends the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE") or not hasattr(signal, "SIGXFSZ"), reason="POSIX only")
def test_a_full_disk_is_one_line_and_leaves_no_half_written_checkpoint(tiny_lcm_built, tmp_path, capsys):
    with _disk_taking_nothing_over(1 << 20):  # the 4 MB checkpoint cannot be written
        line = expect_error(capsys, fast_args(tmp_path, "r", "--epochs", "1"), "cannot write checkpoint")
    assert line.startswith("error: cannot write checkpoint") and "--resume" in line
    checkpoints = tmp_path / "r" / "checkpoints"
    assert not list(checkpoints.iterdir())  # no staging folder, no partial checkpoint
    _resume(tmp_path / "r", 1)  # with room again, the run is continued
    assert [m["epoch"] for m in logged_metrics(tmp_path / "r")] == [1]

"""`python -m genrl.train` end to end on the tiny pipelines: the run directory, resume, determinism, LoRA export."""

import json

import pytest
import torch
from diffusers import LatentConsistencyModelPipeline
from safetensors.torch import load_file

from genrl.policy import add_lora
from genrl.presets import PRESETS
from genrl.shapes.tiny import tiny_pipeline_dir
from genrl.train import main
from tests.helpers import fast_args, logged_metrics, tiny_lcm_unet_output

METRIC_KEYS = {
    "epoch",
    "reward_mean",
    "reward_std",
    "reward_queries",
    "wall_time_s",
    "sample_time_s",
    "train_time_s",
    "loss",
    "approx_kl",
    "clipfrac",
    "ratio_mean",
}


def test_run_directory_has_everything_the_design_promises(tmp_path):
    main(fast_args(tmp_path, "r", "--finetune", "lora"))
    run = tmp_path / "r"
    config = json.loads((run / "config.json").read_text())
    assert config["finetune"] == "lora" and config["epochs"] == 2 and config["preset"] == "tiny-compression"
    metrics = logged_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(METRIC_KEYS <= set(m) for m in metrics)
    assert [m["reward_queries"] for m in metrics] == [4, 8]
    assert metrics[1]["wall_time_s"] > metrics[0]["wall_time_s"] > 0
    for m in metrics:  # the first minibatch of every epoch reproduces the sampling log-probs
        assert abs(m["ratio_mean_first_minibatch"] - 1) < 1e-6
    assert {p.name for p in (run / "samples").glob("*.png")} == {"epoch-0001.png", "epoch-0002.png"}
    assert len(json.loads((run / "samples" / "epoch-0001.json").read_text())) == 4
    latest = run / "checkpoints" / "latest"
    assert latest.resolve().name == "epoch-0002"
    assert (latest / "pytorch_lora_weights.safetensors").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_continues_exactly(tmp_path):
    main(fast_args(tmp_path, "straight", "--epochs", "4"))
    main(fast_args(tmp_path, "split", "--epochs", "2"))
    main(["--resume", str(tmp_path / "split"), "--epochs", "4"])
    straight, split = logged_metrics(tmp_path / "straight"), logged_metrics(tmp_path / "split")
    assert [m["epoch"] for m in split] == [1, 2, 3, 4]
    for key in ("reward_mean", "reward_std", "loss", "approx_kl", "reward_queries"):
        assert [m[key] for m in split] == [m[key] for m in straight], key
    assert split[3]["wall_time_s"] > split[1]["wall_time_s"]


@pytest.mark.slow
def test_resume_forgets_epochs_after_the_checkpoint(tmp_path):
    """Metrics written after the last checkpoint (a crash) are dropped and those epochs run again."""
    main(fast_args(tmp_path, "r", "--epochs", "3", "--save-every", "2"))
    (tmp_path / "r" / "checkpoints" / "latest").unlink()
    (tmp_path / "r" / "checkpoints" / "latest").symlink_to("epoch-0002")
    before = logged_metrics(tmp_path / "r")
    main(["--resume", str(tmp_path / "r")])
    after = logged_metrics(tmp_path / "r")
    assert [m["epoch"] for m in after] == [1, 2, 3]
    assert after[2]["reward_mean"] == before[2]["reward_mean"]


def test_same_seed_same_metrics_other_seed_otherlogged_metrics(tmp_path):
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        main(fast_args(tmp_path, name, "--seed", seed, "--algo", "reinforce"))
    a, b, c = (logged_metrics(tmp_path / n) for n in "abc")
    assert [m["reward_mean"] for m in a] == [m["reward_mean"] for m in b]
    assert [m["loss"] for m in a] == [m["loss"] for m in b]
    assert [m["reward_mean"] for m in a] != [m["reward_mean"] for m in c]


@pytest.mark.parametrize("rank,alpha", [(8, 8.0), (4, 16.0)])  # alpha != rank: diffusers must get the scale too
def test_lora_checkpoint_loads_in_plain_diffusers(tmp_path, rank, alpha):
    lora = ["--finetune", "lora", "--lora-rank", str(rank), "--lora-alpha", str(alpha)]
    main(fast_args(tmp_path, "r", *lora, "--learning-rate", "0.05"))
    ckpt = tmp_path / "r" / "checkpoints" / "latest"
    folder = tiny_pipeline_dir(lcm=True)

    pipe = LatentConsistencyModelPipeline.from_pretrained(folder)
    pipe.load_lora_weights(ckpt)
    ours = LatentConsistencyModelPipeline.from_pretrained(folder).unet
    add_lora(ours.requires_grad_(False), rank, alpha, PRESETS["tiny-compression"].lora_target_modules)
    trained = load_file(ckpt / "trainable.safetensors")
    ours.load_state_dict(trained, strict=False)
    base = LatentConsistencyModelPipeline.from_pretrained(folder).unet

    loaded, expected, untouched = (tiny_lcm_unet_output(unet) for unet in (pipe.unet, ours, base))
    torch.testing.assert_close(loaded, expected, rtol=1e-5, atol=1e-6)
    assert (loaded - untouched).abs().max() > 1e-4


@pytest.mark.slow
def test_ddpo_preset_runs_on_a_local_sd_folder(tmp_path):
    folder = tiny_pipeline_dir(lcm=False)
    main(
        [
            "--preset",
            "ddpo-compression",
            "--model",
            str(folder),
            "--epochs",
            "1",
            "--batches-per-epoch",
            "1",
            "--num-steps",
            "10",
            "--eval-every",
            "0",
            # The preset's fp16 has no CPU arithmetic (about 5x slower here); tests/test_precision.py runs fp16.
            "--mixed-precision",
            "no",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "d",
        ]
    )
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert (config["env"], config["eta"], config["guidance_scale"], config["learning_rate"]) == ("ddpm", 1.0, 5.0, 3e-4)
    ppo = config["ppo"]  # the algorithm's settings, under its name
    assert (ppo["clip_range"], ppo["adv_clip_max"], ppo["max_grad_norm"]) == (1e-4, 5.0, 1.0)
    (m,) = logged_metrics(tmp_path / "d")
    assert m["reward_queries"] == 8 and abs(m["ratio_mean_first_minibatch"] - 1) < 1e-6


def test_help_lists_the_flat_flags(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr()
    for flag in (
        "--preset",
        "--model",
        "--env",
        "--algo",
        "--reward",
        "--prompts",
        "--epochs",
        "--seed",
        "--output-dir",
        "--resume",
        "--device",
    ):
        assert flag in out.out


@pytest.mark.slow
def test_async_rewards_give_the_same_run(tmp_path):
    main(fast_args(tmp_path, "sync", "--batches-per-epoch", "2"))
    main(fast_args(tmp_path, "async", "--batches-per-epoch", "2", "--async-rewards"))
    sync, background = logged_metrics(tmp_path / "sync"), logged_metrics(tmp_path / "async")
    for key in ("reward_mean", "reward_std", "loss"):
        assert [m[key] for m in sync] == [m[key] for m in background]
    assert all(m["reward_time_s"] > 0 for m in background)


def test_async_reward_failures_still_end_in_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "nan_reward.py").write_text(
        "def nan(images, prompts, metadata):\n    return [float('nan')] * len(prompts)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(fast_args(tmp_path, "r", "--async-rewards", "--reward", "nan_reward:nan"))
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: reward 'nan_reward:nan' returned NaN for 4 of 4 images; make the reward finite for every image"
    ]


@pytest.mark.slow
def test_linear_lr_schedule_decays_once_an_epoch_and_is_recorded(tmp_path):
    main(fast_args(tmp_path, "r", "--lr-schedule", "linear", "--learning-rate", "0.04", "--epochs", "4"))
    lrs = [m["lr"] for m in logged_metrics(tmp_path / "r")]
    assert lrs == pytest.approx([0.04, 0.03, 0.02, 0.01])  # from --learning-rate to 0 over --epochs
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr_schedule"] == "linear"


def test_the_evaluation_set_is_fixed_and_scores_the_same_policy_the_same(tmp_path):
    from genrl.train import build, evaluate, parse_config

    args = fast_args(tmp_path, "r", "--eval-every", "1", "--eval-size", "8", "--prompts", "shapes_train")
    a, b = build(parse_config(args)), build(parse_config([*args, "--seed", "1"]))
    assert a.eval_batches == b.eval_batches  # the same prompts and noise whatever --seed
    first, _ = evaluate(a)
    second, _ = evaluate(a)
    for metrics in (first, second):
        assert metrics.pop("eval_time_s") > 0 and metrics.pop("eval_cpu_time_s") > 0
    assert first == second and set(first) == {"eval_reward_mean", "eval_reward_std", "eval_prompt_accuracy"}
    assert 0 <= first["eval_prompt_accuracy"] <= 1


def test_the_evaluation_samples_with_its_own_steps_where_asked(tmp_path):
    """--eval-num-steps 4 on a 3-step run evaluates what a 4-step run evaluates (the same fixed prompts and noise, the
    same untrained model), and leaves the training's env at 3 steps."""
    from genrl.train import build, evaluate, parse_config

    args = fast_args(tmp_path, "r", "--eval-every", "1", "--eval-size", "4", "--prompts", "shapes_train")
    asked = build(parse_config([*args, "--eval-num-steps", "4"]))
    four = build(parse_config([*args, "--num-steps", "4"]))
    assert asked.env.num_steps == 3 and asked.eval_env.num_steps == 4
    assert build(parse_config([*args, "--eval-num-steps", "3"])).eval_env is None  # the training's own
    ours, _ = evaluate(asked)
    theirs, _ = evaluate(four)
    for key in ("eval_reward_mean", "eval_reward_std", "eval_prompt_accuracy"):
        assert ours[key] == theirs[key], key


@pytest.mark.slow
def test_evaluations_are_logged_before_training_every_nth_and_last_epoch(tmp_path):
    main(fast_args(tmp_path, "r", "--epochs", "5", "--eval-every", "2", "--eval-size", "4"))  # (fast_args: 0)
    metrics = logged_metrics(tmp_path / "r")
    assert [m["epoch"] for m in metrics if "eval_reward_mean" in m] == [0, 2, 4, 5]
    assert metrics[0]["reward_queries"] == 0 and metrics[0]["wall_time_s"] == 0 and "reward_mean" not in metrics[0]
    assert all(m["eval_time_s"] > 0 for m in metrics if "eval_time_s" in m)
    assert all(0 < m["cpu_time_s"] for m in metrics[1:])
    assert (tmp_path / "r" / "samples" / "epoch-0000-eval.png").exists()
    assert (tmp_path / "r" / "samples" / "epoch-0005-eval.png").exists()
    # A resumed run keeps its start and does not evaluate it again.
    main(["--resume", str(tmp_path / "r"), "--epochs", "6"])
    assert [m["epoch"] for m in logged_metrics(tmp_path / "r") if "eval_reward_mean" in m] == [0, 2, 4, 5, 6]
    main(fast_args(tmp_path, "off", "--epochs", "2", "--eval-every", "0"))
    assert not any("eval_reward_mean" in m for m in logged_metrics(tmp_path / "off"))


@pytest.mark.slow
def test_cpu_time_leaves_evaluation_out(tmp_path, monkeypatch):
    import time

    import genrl.train

    clock = {"cpu": 0.0}  # a process clock that only evaluations advance
    monkeypatch.setattr(time, "process_time", lambda: clock["cpu"])
    real_evaluate = genrl.train.evaluate

    def costly_evaluate(t):
        metrics, shown = real_evaluate(t)
        clock["cpu"] += 100.0
        return {**metrics, "eval_cpu_time_s": 100.0}, shown

    monkeypatch.setattr(genrl.train, "evaluate", costly_evaluate)
    main(fast_args(tmp_path, "r", "--epochs", "3", "--eval-every", "1", "--eval-size", "4"))
    assert [m["cpu_time_s"] for m in logged_metrics(tmp_path / "r")] == [0.0, 0.0, 0.0, 0.0]


def test_sample_grid_captions_show_the_whole_prompt():
    import numpy as np

    from genrl.rundir import image_grid

    images = torch.ones(2, 3, 64, 64)  # white tiles: only caption text is dark
    prompt = "-1.75 two large red circles on a blue background"
    short, long = image_grid(images, ["x", "y"]), image_grid(images, [prompt, "y"])
    assert long.height > short.height  # the caption wraps onto more lines instead of being cut
    caption = np.asarray(long.convert("L"))[64:, :64]
    lines_with_ink = [row for row in range(0, caption.shape[0], 11) if (caption[row : row + 11] < 128).any()]
    assert len(lines_with_ink) == 5  # "-1.75 two" "large red" "circles on" "a blue" "background"


def test_a_composite_rewards_evaluation_logs_each_part(tmp_path):
    reward = "jpeg_compressibility=1,jpeg_incompressibility=0.25"
    main(fast_args(tmp_path, "r", "--epochs", "1", "--eval-every", "1", "--eval-size", "4", "--reward", reward))
    for m in (m for m in logged_metrics(tmp_path / "r") if "eval_reward_mean" in m):
        parts = m["eval_reward_parts"]  # the task's own reward stays readable beside the weighted sum
        assert parts["jpeg_compressibility"] == -parts["jpeg_incompressibility"]
        assert m["eval_reward_mean"] == pytest.approx(0.75 * parts["jpeg_compressibility"], rel=1e-6)

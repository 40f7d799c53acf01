"""The benchmark suite: its summary of evaluation curves, its report, resuming an interrupted suite, its errors."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import benchmarks.evaluation as evaluation
import benchmarks.run as suite
from benchmarks.figures import plot_curves, plot_evaluations
from benchmarks.report import write_report
from benchmarks.run import Args, main
from benchmarks.summary import summarise
from genrl.config import PRESETS, replace_config


def _metrics(rate: float, start: float = 0.0, evaluations: int = 6, seconds_per_query: float = 0.1) -> list[dict]:
    """A run evaluated every 32 queries, its eval reward rising at ``rate`` per query; accuracy falling slowly."""
    return [
        {
            "epoch": i,
            "reward_queries": 32 * i,
            "wall_time_s": 32 * i * seconds_per_query,
            "cpu_time_s": 32 * i * seconds_per_query * 1.9,
            "eval_reward_mean": start + rate * 32 * i,
            "eval_reward_std": 0.16,
            "eval_prompt_accuracy": 0.8 - 0.01 * i,
        }
        for i in range(evaluations)
    ]


def _task(ddpo_rate: float = 0.001) -> dict:
    steps = lambda t, hs: {str(h): {"reward": 0.1 * h, "seconds_per_image": t * h} for h in hs}
    return {
        # RLCM: 4x DDPO's reward per query, 5x faster per query; two seed pairs.
        "runs": {
            "RLCM (PPO)": [
                _metrics(4 * ddpo_rate, seconds_per_query=0.02),
                _metrics(2 * ddpo_rate, seconds_per_query=0.02),
            ],
            "DDPO (PPO)": [_metrics(ddpo_rate, start=0.05), _metrics(ddpo_rate, start=0.05)],
        },
        "configs": {"RLCM (PPO)": {"num_steps": 4}, "DDPO (PPO)": {"num_steps": 20, "eval_size": 16}},
        "evaluation": {
            "RLCM (PPO)": {"steps": steps(0.01, (2, 4, 8)), "trained_reward": 0.4, "heldout_reward": 0.3},
            "DDPO (PPO)": {"steps": steps(0.1, (5, 10, 20, 50)), "trained_reward": 0.8, "heldout_reward": 0.5},
        },
    }


def _results(task: dict) -> dict:
    meta = dict(suite="shapes", command="x", machine="m", seeds=2, eval_images=8)
    meta.update(queries={"compression": 160}, eval_queries={"compression": 32})
    return {"tasks": {"compression": {**task, "summary": summarise(task)}}, "meta": {**meta, "date": "d", "total_s": 1}}


def test_summary_ratios_come_from_the_evaluation_curves_per_seed_pair():
    summary = summarise(_task())
    # DDPO: 0.05 + 0.001 q, final = mean of q = 96, 128, 160 -> 0.178, reached at q = 128, 12.8 s.
    # RLCM seed 0: 0.004 q reaches 0.178 at q = 44.5 (0.89 s); seed 1: 0.002 q at q = 89 (1.78 s).
    assert summary["query_efficiency"] == pytest.approx((128 / 44.5 + 128 / 89) / 2)
    assert summary["train_speedup"] == pytest.approx((12.8 / 0.89 + 12.8 / 1.78) / 2)
    low, high = summary["train_speedup_ci95"]
    assert low < summary["train_speedup"] < high  # bootstrap means of 2 pairs: each one alone, or their mean
    assert (low, high) == (pytest.approx(12.8 / 1.78), pytest.approx(12.8 / 0.89))
    assert not summary["train_speedup_lower_bound"] and summary["train_speedup_why_none"] is None
    reward = summary["eval_reward"]["DDPO (PPO)"]
    assert (reward["start"], reward["end"], reward["gain"]) == pytest.approx((0.05, 0.178, 0.128))
    assert summary["eval_prompt_accuracy"]["RLCM (PPO)"]["start"] == pytest.approx(0.8)
    assert summary["inference_speedup"] == pytest.approx((0.1 * 20) / (0.01 * 4))
    assert summary["inference_speedup_50_ddim"] == pytest.approx((0.1 * 50) / (0.01 * 4))
    assert summary["contended_runs"] == []
    assert summary["ddpo_gain_in_standard_errors"] == pytest.approx(0.128 / (0.16 / 4))
    # Accuracy falls 0.01 an evaluation (32 queries): DDPO reaches at q = 128, RLCM at 44.5 and 89.
    assert summary["prompt_accuracy_at_target"] == {
        "DDPO (PPO)": pytest.approx(0.76),
        "RLCM (PPO)": pytest.approx(0.8 - 0.01 * (44.5 + 89) / 2 / 32),
    }


def test_rlcm_past_ddpos_budget_counts_for_the_ratio_but_start_and_end_compare_equal_queries():
    task = _task()
    # RLCM seed 1 gains as fast per query as DDPO: it reaches DDPO's 0.178 at q = 178, past DDPO's 160 queries,
    # on a run that went on to 320.
    task["runs"]["RLCM (PPO)"][1] = _metrics(0.001, evaluations=11, seconds_per_query=0.02)
    summary = summarise(task)
    assert [p["value"] for p in summary["query_efficiency_pairs"]] == [
        pytest.approx(128 / 44.5),
        pytest.approx(128 / 178),
    ]
    assert summary["train_speedup_pairs"][1]["value"] == pytest.approx(12.8 / (178 * 0.02))
    # Ends at DDPO's 160 queries: seed 0 0.004 * 128, seed 1 0.001 * 128 (mean of the evaluations at 96, 128, 160).
    assert summary["eval_reward"]["RLCM (PPO)"]["end"] == pytest.approx((0.512 + 0.128) / 2)
    assert summary["eval_prompt_accuracy"]["RLCM (PPO)"]["end"] == pytest.approx(0.8 - 0.04)


def test_missing_ratios_say_why_and_a_contended_run_is_flagged(tmp_path):
    flat = _task()
    flat["runs"]["DDPO (PPO)"] = [_metrics(0.0, start=0.05)] * 2
    summary = summarise(flat)
    assert summary["train_speedup"] is None and summary["train_speedup_why_none"] == "DDPO gains nothing over its start"
    assert summarise(_task(ddpo_rate=0.0))["train_speedup_why_none"] == "RLCM never reaches DDPO's reward"
    one_flat = _task()
    one_flat["runs"]["DDPO (PPO)"][1] = _metrics(0.0, start=0.05)
    summary = summarise(one_flat)  # seed 1's DDPO gains nothing: seed 0's pair alone is measured
    assert summary["train_speedup"] == pytest.approx(12.8 / 0.89) and summary["train_speedup_left_out"] == 1
    write_report(_results(one_flat), tmp_path)
    assert "(1 of 2 seed pairs; left out: DDPO gains nothing over its start)" in (tmp_path / "report.md").read_text()
    slow_rlcm = _task()
    slow_rlcm["runs"]["RLCM (PPO)"][1] = _metrics(0.0001, seconds_per_query=0.02)
    assert summarise(slow_rlcm)["train_speedup_why_none"] == "RLCM never reaches DDPO's reward"
    contended = _task()
    for m in contended["runs"]["DDPO (PPO)"][1]:
        m["cpu_time_s"] /= 2  # half the CPU per wall-clock second of its twin: something else held a core
    assert summarise(contended)["contended_runs"] == [
        {"method": "DDPO (PPO)", "seed": 1, "cpu_per_wall": pytest.approx(0.95), "best_of_method": pytest.approx(1.9)}
    ]
    write_report(_results(contended), tmp_path)
    assert "compression DDPO (PPO) seed 1 (0.95 of 1.90)" in (tmp_path / "report.md").read_text()
    write_report(_results(flat), tmp_path)
    assert "| compression | n/a (DDPO gains nothing over its start) |" in (tmp_path / "report.md").read_text()


def test_report_and_figures(tmp_path):
    results = _results(_task())
    summary = results["tasks"]["compression"]["summary"]
    plot_curves(results, "reward_queries", "reward queries", tmp_path / "fig4.png")
    plot_evaluations(results, tmp_path)
    write_report(results, tmp_path)
    assert (tmp_path / "fig4.png").stat().st_size > 0 and (tmp_path / "fig8_heldout.png").exists()
    report = (tmp_path / "report.md").read_text()
    low, high = summary["train_speedup_ci95"]
    assert f"| compression | {summary['train_speedup']:.2f} [{low:.2f}, {high:.2f}] |" in report
    assert "| 0.76 / 0.78 | 3.2 |" in report  # accuracy at the target, DDPO's gain in standard errors
    assert "| compression | DDPO (PPO) | 0.050 -> 0.178 (+0.128 [+0.128, +0.128]) |" in report


def test_report_only_rebuilds_summary_figures_and_report_from_results_json(tmp_path):
    results = _results(_task())
    results["tasks"]["compression"]["summary"] = {"stale": True}
    (tmp_path / "results.json").write_text(json.dumps(results))
    main(Args(output_dir=tmp_path, report_only=True))
    rebuilt = json.loads((tmp_path / "results.json").read_text())
    assert rebuilt["summary"]["compression"] == json.loads(json.dumps(summarise(_task())))
    assert (tmp_path / "report.md").exists() and (tmp_path / "fig5_reward_vs_wallclock.png").exists()
    assert not (tmp_path / "runs").exists()  # nothing trained


def _tiny_methods(args, task):
    small = dict(
        sample_batch_size=4, batches_per_epoch=1, train_batch_size=2, eval_size=4, finetune="lora", lora_rank=2
    )
    return {
        "RLCM (PPO)": replace_config(PRESETS["tiny-compression"], num_steps=2, **small),
        "DDPO (PPO)": replace_config(PRESETS["tiny-ddpo-compression"], num_steps=3, **small),
    }


def test_an_interrupted_suite_skips_finished_runs_and_resumes_the_interrupted_one(tmp_path, monkeypatch):
    import benchmarks.runs
    import genrl.train

    monkeypatch.setattr(suite, "method_configs", _tiny_methods)
    monkeypatch.setattr(evaluation, "evaluation_steps", lambda cfg, quick=False: [cfg.num_steps])
    args = Args(output_dir=tmp_path, tasks=("compression",), seeds=1, queries=12, eval_queries=4, eval_images=4)
    real_epoch = genrl.train.run_epoch

    def interrupted(t, epoch):  # DDPO is stopped in its third epoch, after the checkpoint of its second
        if t.cfg.run_name == "compression-ddpo-ppo-seed0" and epoch == 3:
            raise KeyboardInterrupt
        return real_epoch(t, epoch)

    monkeypatch.setattr(genrl.train, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    runs = tmp_path / "runs"
    assert (runs / "compression-rlcm-ppo-seed0" / "finished.json").is_file()
    assert not (runs / "compression-ddpo-ppo-seed0" / "finished.json").exists()
    before = [json.loads(line) for line in (runs / "compression-ddpo-ppo-seed0" / "metrics.jsonl").open()]
    assert [m["epoch"] for m in before] == [0, 1, 2]

    monkeypatch.setattr(genrl.train, "run_epoch", real_epoch)
    trained = []
    real_train = benchmarks.runs.train
    monkeypatch.setattr(benchmarks.runs, "train", lambda cfg: trained.append(cfg) or real_train(cfg))
    main(args)
    assert [(c.run_name, c.resume) for c in trained] == [
        ("compression-ddpo-ppo-seed0", runs / "compression-ddpo-ppo-seed0")
    ]  # the finished RLCM run is read, not trained again
    after = json.loads((runs / "compression-ddpo-ppo-seed0" / "finished.json").read_text())["metrics"]
    assert [m["epoch"] for m in after] == [0, 1, 2, 3] and after[:3] == before
    # RLCM went on to twice DDPO's 12 queries and kept its model at 12 for the final-model evaluation.
    rlcm = json.loads((runs / "compression-rlcm-ppo-seed0" / "finished.json").read_text())["metrics"]
    assert rlcm[-1]["reward_queries"] == 24
    assert (runs / "compression-rlcm-ppo-seed0" / "checkpoints" / "epoch-0003").is_dir()
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["summary"]["compression"]) >= {"train_speedup", "train_speedup_ci95", "eval_reward"}
    assert (tmp_path / "report.md").exists() and (tmp_path / "samples_compression.png").exists()

    main(args)  # everything finished: nothing trains
    assert len(trained) == 1


def test_a_run_directory_with_other_settings_is_not_taken_over(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite, "method_configs", _tiny_methods)
    monkeypatch.setattr(evaluation, "evaluation_steps", lambda cfg, quick=False: [cfg.num_steps])
    args = Args(output_dir=tmp_path, tasks=("compression",), seeds=1, queries=4, eval_queries=4, eval_images=4)
    main(args)
    with pytest.raises(Exception, match="holds a run with other settings"):
        main(dataclasses.replace(args, queries=8, eval_queries=4))


def _cli_errors(*args: str, real_process: bool = False) -> list[str]:
    """``python -m benchmarks.run ARGS``, which must fail with exit code 2: its stderr lines. ``real_process``: run
    as a command (once, for the exit status and the lines a real process prints), else ``cli()`` in this process."""
    if real_process:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.run", *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 2, proc.stderr
        return proc.stderr.strip().splitlines()
    with pytest.MonkeyPatch.context() as patch, _capture_stderr() as err:
        patch.setattr(sys, "argv", ["benchmarks.run", *args])
        with pytest.raises(SystemExit) as exit_:
            suite.cli()
    assert exit_.value.code == 2, err.getvalue()
    return err.getvalue().strip().splitlines()


def _capture_stderr():
    import contextlib
    import io

    return contextlib.redirect_stderr(io.StringIO())


def test_the_paper_suite_says_what_it_needs(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    lines = _cli_errors("--suite", "paper", "--output-dir", str(tmp_path / "out"))
    assert len(lines) == 1 and lines[0].startswith("error: the paper suite cannot run here")
    assert "SimianLuo/LCM_Dreamshaper_v7" in lines[0] and "GPU" in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_budget_that_is_not_whole_epochs_is_a_one_line_error(tmp_path):
    lines = _cli_errors("--queries", "100", "--output-dir", str(tmp_path))
    assert len(lines) == 1 and "must be whole epochs" in lines[0] and "multiples of 32" in lines[0]


def test_report_only_without_results_is_a_one_line_error(tmp_path):
    assert _cli_errors("--report-only", "--output-dir", str(tmp_path / "none")) == [
        f"error: --report-only needs {tmp_path / 'none' / 'results.json'}: pass the --output-dir of a finished "
        "benchmark run"
    ]


def test_report_only_on_a_broken_results_file_is_a_one_line_error_that_keeps_it(tmp_path):
    (tmp_path / "results.json").write_text('{"tasks": ')
    lines = _cli_errors("--report-only", "--output-dir", str(tmp_path), real_process=True)
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'results.json'} is not valid JSON")
    assert (tmp_path / "results.json").read_text() == '{"tasks": '


def test_the_sweep_picks_the_best_reward_that_keeps_prompt_accuracy():
    from benchmarks.sweep import pick_winner

    rows = [
        {"setting": "hacks", "reward_final": 1.0, "accuracy_start": 0.7, "accuracy_final": 0.3},
        {"setting": "keeps", "reward_final": 0.5, "accuracy_start": 0.7, "accuracy_final": 0.56},  # exactly 80%
        {"setting": "timid", "reward_final": 0.2, "accuracy_start": 0.7, "accuracy_final": 0.7},
    ]
    assert pick_winner(rows)["setting"] == "keeps"
    lost = [rows[0], {**rows[0], "setting": "lost less", "accuracy_final": 0.5}]
    assert pick_winner(lost)["setting"] == "lost less"  # none qualifies: the one that keeps the most


# --------------------------------------------------------------------------------------------------
# Bad input: one ``error:`` line naming the problem and the fix, before anything is trained or written
# --------------------------------------------------------------------------------------------------
def _set(path: tuple, value):
    """A mutation of a results dict: the value at ``path`` replaced (or, for ``_DELETE``, removed)."""

    def mutate(results: dict):
        *parents, last = path
        for key in parents:
            results = results[key]
        if value is _DELETE:
            del results[last]
        else:
            results[last] = value

    return mutate


_DELETE = object()
_RUNS = ("tasks", "compression", "runs")
_EVAL = ("tasks", "compression", "evaluation")
_MALFORMED = {  # case -> (the file's content: a whole JSON value or a mutation of a good file; what the error says)
    "a list": ([], "the top level should be an object, not a list"),
    "a number": (3, "the top level should be an object, not the number 3"),
    "an empty object": ({}, 'the top level has no "tasks"'),
    "no tasks": (_set(("tasks",), {}), '["tasks"] names no task'),
    "runs missing": (_set(_RUNS, _DELETE), '["tasks"]["compression"] has no "runs"'),
    "a method missing": (_set((*_RUNS, "RLCM (PPO)"), _DELETE), '["runs"] has no "RLCM (PPO)"'),
    "an unknown method": (
        _set((*_RUNS, "RLCM (SGD)"), []),
        '["runs"] names the method "RLCM (SGD)", not one of RLCM (PPO), DDPO (PPO), RLCM (REINFORCE), RLCM (DPG)',
    ),
    "a string for a method's seeds": (
        _set((*_RUNS, "DDPO (PPO)"), "seed 0"),
        '["runs"]["DDPO (PPO)"] should be a list, not the string "seed 0"',
    ),
    "no seeds": (_set((*_RUNS, "DDPO (PPO)"), []), '["runs"]["DDPO (PPO)"] holds no run'),
    "a string for a run's metrics": (
        _set((*_RUNS, "RLCM (PPO)", 1), "metrics.jsonl"),
        '["RLCM (PPO)"][1] should be a list, not the string "metrics.jsonl"',
    ),
    "metrics records that are not objects": (
        _set((*_RUNS, "RLCM (PPO)", 0), [1, 2]),
        '["RLCM (PPO)"][0][0] should be an object, not the number 1',
    ),
    "an empty run": (_set((*_RUNS, "DDPO (PPO)", 0), []), '["DDPO (PPO)"][0] has 0 evaluations'),
    "a missing key in a record": (
        _set((*_RUNS, "DDPO (PPO)", 0, 2, "wall_time_s"), _DELETE),
        '["DDPO (PPO)"][0][2] has no "wall_time_s"',
    ),
    "a non-numeric value": (
        _set((*_RUNS, "RLCM (PPO)", 1, 3, "eval_reward_mean"), "0.5"),
        '["RLCM (PPO)"][1][3]["eval_reward_mean"] should be a number, not the string "0.5"',
    ),
    "null for a number": (
        _set((*_RUNS, "DDPO (PPO)", 1, 0, "eval_reward_std"), None),
        '["DDPO (PPO)"][1][0]["eval_reward_std"] should be a number, not null',
    ),
    "true for a number": (
        _set((*_RUNS, "DDPO (PPO)", 1, 4, "reward_queries"), True),
        '["reward_queries"] should be a number, not true',
    ),
    "an evaluation without its std": (
        _set((*_RUNS, "DDPO (PPO)", 0, 0, "eval_reward_std"), _DELETE),
        '["DDPO (PPO)"][0][0] has "eval_reward_mean" but no "eval_reward_std"',
    ),
    "configs missing": (_set(("tasks", "compression", "configs"), _DELETE), '["compression"] has no "configs"'),
    "a config without eval_size": (
        _set(("tasks", "compression", "configs", "DDPO (PPO)", "eval_size"), _DELETE),
        '["configs"]["DDPO (PPO)"] has no "eval_size"',
    ),
    "an evaluation without the training horizon": (
        _set((*_EVAL, "RLCM (PPO)", "steps", "4"), _DELETE),
        '["evaluation"]["RLCM (PPO)"]["steps"] has no "4"',
    ),
    "a step count that is not a number": (
        _set((*_EVAL, "DDPO (PPO)", "steps", "many"), {"reward": 1.0, "seconds_per_image": 1.0}),
        '["DDPO (PPO)"]["steps"] has the key "many", not a number of steps',
    ),
    "zero seconds per image": (
        _set((*_EVAL, "RLCM (PPO)", "steps", "4", "seconds_per_image"), 0),
        '["seconds_per_image"] should be a positive number, not the number 0',
    ),
    "meta missing": (_set(("meta",), _DELETE), 'the top level has no "meta"'),
    "meta without a task's eval_queries": (
        _set(("meta", "eval_queries"), {}),
        '["meta"]["eval_queries"] has no "compression"',
    ),
}


@pytest.mark.parametrize("case", list(_MALFORMED))
def test_report_only_on_a_malformed_results_file_names_where_and_the_fix_and_keeps_it(tmp_path, case):
    from genrl.errors import GenrlError

    content, says = _MALFORMED[case]
    if callable(content):
        results = json.loads(json.dumps(_results(_task())))
        content(results)
        content = results
    path = tmp_path / "results.json"
    path.write_text(json.dumps(content))
    with pytest.raises(GenrlError) as error:
        main(Args(output_dir=tmp_path, report_only=True))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path} does not hold a benchmark's results: ")
    assert says in message and "restore it, or delete it and rerun the benchmark" in message
    assert path.read_text() == json.dumps(content)  # kept as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no report or figure from it


def test_the_committed_results_pass_the_check():
    from pathlib import Path

    from benchmarks.results_check import check_results

    check_results(json.loads((Path(__file__).parents[1] / "docs" / "benchmark" / "results.json").read_text()))


def test_a_malformed_results_file_is_one_line_on_the_command_line(tmp_path):
    (tmp_path / "results.json").write_text('{"tasks": {"compression": {"runs": []}}}')
    lines = _cli_errors("--report-only", "--output-dir", str(tmp_path))
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'results.json'} does not hold")
    assert '["tasks"]["compression"]["runs"] should be an object, not a list' in lines[0]


def _no_work(*args, **kwargs):
    raise AssertionError("the command started work on bad input")


def _cli_in_process(cli, argv: list[str], monkeypatch, capsys) -> str:
    """``cli`` on ``argv``, which must end in exit status 2 before any work: its one line on stderr."""
    monkeypatch.setattr(sys, "argv", ["benchmarks", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli()
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def _count(flag: str, value: str) -> str:
    return f"error: {flag} must be at least 1, got {value}: pass a positive number, or leave it out for the default"


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--seeds", "0"], _count("--seeds", "0")),
        (["--seeds", "-1"], _count("--seeds", "-1")),
        (["--queries", "0"], _count("--queries", "0")),
        (["--eval-queries", "0"], _count("--eval-queries", "0")),
        (["--eval-images", "0"], _count("--eval-images", "0")),
        (["--eval-images", "-8", "--quick"], _count("--eval-images", "-8")),
        (["--rlcm-queries-factor", "0"], _count("--rlcm-queries-factor", "0")),
        (["--seeds", "0", "--report-only"], _count("--seeds", "0")),
        (["--eval-images", "12"], "error: --eval-images must be at most 8 or a multiple of 8, got 12: pass 8 or 16"),
        (["--tasks"], "error: --tasks names no task: list at least one, or leave it out for the default"),
        (["--tasks", "compression", "compression"], "error: --tasks names compression twice: list each task once"),
    ],
)
def test_a_bad_flag_of_the_suite_is_a_one_line_error_before_any_work(tmp_path, monkeypatch, capsys, flags, line):
    for name in ("run_to_completion", "untrained_evaluation", "evaluate_task", "write_outputs"):
        monkeypatch.setattr(suite, name, _no_work)
    out = tmp_path / "out"
    assert _cli_in_process(suite.cli, [*flags, "--output-dir", str(out)], monkeypatch, capsys) == line
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--seeds", "0"], _count("--seeds", "0")),
        (["--seeds", "-1"], _count("--seeds", "-1")),
        (["--queries", "0"], _count("--queries", "0")),
        (["--eval-queries", "-64"], _count("--eval-queries", "-64")),
        (["--families"], "error: --families names no family: list at least one, or leave it out for the default"),
        (["--families", "jpeg", "jpeg"], "error: --families names jpeg twice: list each family once"),
    ],
)
def test_a_bad_flag_of_the_sweep_is_a_one_line_error_before_any_work(tmp_path, monkeypatch, capsys, flags, line):
    import benchmarks.sweep as sweep

    monkeypatch.setattr(sweep, "run_to_completion", _no_work)
    out = tmp_path / "out"
    assert _cli_in_process(sweep.cli, [*flags, "--output-dir", str(out)], monkeypatch, capsys) == line
    assert not out.exists()


@pytest.mark.parametrize(
    "content",
    ["{", "[]", '{"metrics": [{"reward_queries": 0}]}', "\udcff"],
    ids=["not JSON", "a list", "a record without wall_time_s", "not UTF-8"],
)
def test_a_broken_finished_run_is_a_one_line_error_that_keeps_it(tmp_path, content):
    from benchmarks.runs import run_to_completion
    from genrl.errors import GenrlError

    cfg = dataclasses.replace(PRESETS["tiny-compression"], output_dir=tmp_path, run_name="run")
    finished = tmp_path / "run" / "finished.json"
    finished.parent.mkdir()
    raw = content.encode("utf-8", "surrogateescape")  # the last: a byte that is not UTF-8
    finished.write_bytes(raw)
    with pytest.raises(GenrlError) as error:
        run_to_completion(cfg)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{finished} ")
    assert f"delete {tmp_path / 'run'}" in message
    assert finished.read_bytes() == raw

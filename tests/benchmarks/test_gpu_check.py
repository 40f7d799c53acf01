"""The GPU check (benchmarks/gpu_check.py): its dry run on the CPU writes the JSON and the table; the budget skips
and stops parts and says so; the suite's ratios are read from a results.json. The tests whose names say cuda run on
a CUDA device only: the check runs them there (``pytest -k cuda``)."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import benchmarks.gpu_check as gpu_check
from genrl.train import main
from tests.helpers import fast_args, logged_metrics

REPO = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.slow
def test_the_dry_run_writes_the_json_and_the_table(tmp_path, capsys):
    args = gpu_check.Args(output_dir=tmp_path, dry_run=True, epochs=1, parts=("tests", "epochs"), budget_s=300)
    gpu_check.main(args)
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    meta = results["meta"]
    assert meta["dry_run"] and meta["device"] == "cpu" and meta["budget_s"] == 300 and meta["total_s"] > 0
    assert results["skipped"] == []

    tests = results["parts"]["tests"]  # on a CPU the CUDA tests are skipped; none fails
    assert tests["status"] == "ok" and tests["failures"] == tests["errors"] == 0 and tests["skipped"] >= 1
    assert "tests/benchmarks/test_gpu_check.py" in tests["files"] and "tests/test_reliability.py" in tests["files"]

    cases = results["epochs"]
    assert [(c["family"], c["precision"]) for c in cases] == [
        (family, precision) for family in ("lcm", "ddpm", "flow") for precision in ("fp16", "bf16")
    ]
    for case in cases:
        assert "error" not in case, case
        assert case["preset"] == gpu_check.PRESET_OF_FAMILY[case["family"]] and case["images_per_epoch"] == 2
        assert case["resolution"] == 64 and case["steps"] == 2 and len(case["epochs"]) == 1
        assert case["sampling_images_per_s"] > 0 and case["update_images_per_s"] > 0 and case["peak_mib"] > 0
        assert math.isfinite(case["epochs"][0]["loss"]) and case["optimizer_steps_per_epoch"] == 1
        assert case["official"] == gpu_check.OFFICIAL[case["family"]]
    flow = next(c for c in cases if c["family"] == "flow")  # guidance by a doubled batch, and the KL's reference
    assert flow["sampling_passes_per_image"] == 4
    assert flow["update_passes_per_image"] == {"forward_backward": 2, "forward_only": 2}
    lcm = next(c for c in cases if c["family"] == "lcm")  # the w-embedding: one pass a step, both steps trained
    assert lcm["sampling_passes_per_image"] == 2 and lcm["update_passes_per_image"]["forward_backward"] == 2

    table = (tmp_path / "gpu_check.md").read_text()
    assert table in capsys.readouterr().out
    assert "# GPU check (dry run: CPU, tiny configs)" in table
    assert f"| tests | ok | {gpu_check._num(tests['s'])} | {tests['passed']} passed, 0 failed" in table
    bf16 = next(c for c in cases if c["family"] == "ddpm" and c["precision"] == "bf16")
    assert (
        f"| ddpm (ddpo-compression) | tiny ddpm (dry run) | bf16 | 2 | {gpu_check._num(bf16['sampling_images_per_s'])} "
        f"| {gpu_check._num(bf16['update_images_per_s'])} | {bf16['peak_mib']:.0f} | 4, 4 (+0) | 100, 100 (+0) |"
    ) in table


def test_the_budget_skips_a_part_it_cannot_start_and_stops_one_that_runs_past_it(tmp_path):
    budget = gpu_check.Budget(3.0)
    slow = gpu_check.Part("slow", [sys.executable, "-c", "import time; time.sleep(60)"], min_s=0)
    outcome = gpu_check.run_part(slow, budget, tmp_path)
    assert outcome["status"] == "timed out" and outcome["s"] < 10  # killed at the budget's end, not the sleep's

    results = gpu_check.check(gpu_check.Args(output_dir=tmp_path / "out", dry_run=True, parts=("suite",), budget_s=2))
    assert results["parts"]["suite"]["status"] == "skipped" and results["suite"] == {}
    assert results["skipped"] == ["suite: skipped (2 s of the budget left, the part needs at least 10)"]
    table = gpu_check.table(results)
    assert "| suite | skipped | - | 2 s of the budget left, the part needs at least 10 |" in table
    assert "Skipped or stopped:" in table and "no results.json was written" in table


def test_the_suites_ratios_are_read_from_its_results(tmp_path):
    suite = gpu_check.read_suite(REPO / "docs" / "benchmark")  # the committed CPU results
    compression = suite["tasks"]["compression"]
    committed = json.loads((REPO / "docs" / "benchmark" / "results.json").read_text())["tasks"]["compression"]
    assert compression["fidelity_speedup"] == committed["summary"]["fidelity_speedup"]
    assert compression["inference_speedup"] == committed["summary"]["inference_speedup"]
    assert "fidelity_speedup" in compression["headline"]
    meta = {"dry_run": False, "device_name": "a GPU", "device": "cuda", "torch": "2", "cuda": "13", "commit": None}
    meta |= {"date": "today", "total_s": 1.0, "budget_s": 480.0}
    results = {"meta": meta, "parts": {}, "skipped": [], "suite": suite}
    table = gpu_check.table(results)
    assert f"- compression: fidelity_speedup {gpu_check._num(compression['fidelity_speedup'])}," in table


@needs_cuda
@pytest.mark.parametrize("env", ["lcm", "ddpm", "flow"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_on_cuda_a_tiny_run_trains_saves_and_resumes(tmp_path, env, precision):
    args = ["--device", "cuda", "--env", env, "--model", "tiny", "--mixed-precision", precision, "--save-every", "1"]
    main(fast_args(tmp_path, "r", *args, "--epochs", "1"))
    main(["--resume", str(tmp_path / "r"), "--epochs", "2"])
    records = logged_metrics(tmp_path / "r")
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["reward_mean"]) for r in records)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["device"] == "cuda" and config["mixed_precision"] == precision


@needs_cuda
@pytest.mark.parametrize("family", ["lcm", "ddpm", "flow"])
def test_on_cuda_an_epoch_case_reports_cuda_memory(family):
    case = gpu_check.epoch_case(family, "bf16", "cuda", dry=True, epochs=1)
    assert case["memory_kind"].startswith("cuda") and case["peak_mib"] >= case["after_build"]["allocated_mib"] > 0
    assert case["sampling_images_per_s"] > 0 and case["update_images_per_s"] > 0

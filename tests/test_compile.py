"""--compile: the denoiser compiled in place, so that checkpoints, LoRA exports and resume are those of an eager run.

Inductor's C++ code generation takes minutes even for the tiny UNet on a 2-core CPU, so these tests compile through
torch.compile's ``aot_eager`` backend: the same graph capture (dynamo, AOTAutograd, the LoRA layers, the backward
pass) without generated kernels, which keeps the numbers exactly eager's. Inductor's own numbers and its compile
cost are measured by ``python -m benchmarks.compile_break_even``.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from genrl.train import main
from tests.helpers import fast_args, metrics_without_timings


@pytest.fixture
def compiled_calls(monkeypatch):
    """Every Module.compile goes to aot_eager; the modules compiled are listed."""
    compiled, compile_in_place = [], torch.nn.Module.compile

    def aot_eager(self, **options):
        compiled.append(type(self).__name__)
        compile_in_place(self, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", aot_eager)
    return compiled


@pytest.mark.slow
def test_a_compiled_run_resumes_and_exports_what_an_eager_run_does(tmp_path, compiled_calls):
    lora = ("--threads", "1", "--finetune", "lora")
    main(fast_args(tmp_path, "eager", *lora))
    assert compiled_calls == []
    main(fast_args(tmp_path, "compiled", *lora, "--compile", "--epochs", "1", "--save-every", "1"))
    assert compiled_calls == ["UNet2DConditionModel"]
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["compile"] is True
    main(["--resume", str(tmp_path / "compiled"), "--epochs", "2"])  # compiles again: the saved config says so
    assert len(compiled_calls) == 2
    assert metrics_without_timings(tmp_path / "compiled") == metrics_without_timings(tmp_path / "eager")
    export = "pytorch_lora_weights.safetensors"
    eager, compiled = (load_file(tmp_path / run / "checkpoints" / "latest" / export) for run in ("eager", "compiled"))
    assert eager.keys() == compiled.keys() and not any("_orig_mod" in key for key in compiled)
    assert all(torch.equal(eager[key], compiled[key]) for key in eager)

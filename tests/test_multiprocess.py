"""Two processes on CPU (gloo), launched as a user launches them: ``python -m genrl.launch --num-processes 2``, or
``accelerate launch --multi_gpu --num_processes 2 -m genrl.train``. The layouts with accumulation, and a failing
process, have files of their own (test_multiprocess_layouts.py, test_multiprocess_failures.py)."""

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import fast_args, logged_metrics
from tests.launching import assert_two_follow_one, one_and_two, train_layout

pytestmark = pytest.mark.usefixtures("tiny_lcm_built")  # tests/conftest.py


def test_two_processes_make_the_first_update_of_one_process_with_the_whole_batch(tmp_path):
    # Adam's first step is lr * g / (|g| + eps): with a tiny eps it divides rounding noise by itself wherever g is
    # tiny. A large eps makes the step proportional to the gradient, so the comparison is at float precision.
    common = ["--epochs", "1", "--batches-per-epoch", "1", "--adam-epsilon", "1", "--learning-rate", "1"]
    one = fast_args(tmp_path, "one", *common, "--sample-batch-size", "4", "--ppo.train-batch-size", "4")
    two = fast_args(tmp_path, "two", *common, "--sample-batch-size", "2", "--ppo.train-batch-size", "2")
    one_and_two(one, two, launcher="accelerate")
    a, b = (load_file(tmp_path / n / "checkpoints" / "latest" / "trainable.safetensors") for n in ("one", "two"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    (m1,), (m2,) = logged_metrics(tmp_path / "one"), logged_metrics(tmp_path / "two")
    assert m1["reward_queries"] == m2["reward_queries"] == 4  # counted over both processes
    for key in ("reward_mean", "reward_std", "grad_norm", "loss"):
        assert abs(m1[key] - m2[key]) <= 1e-5 * max(1.0, abs(m1[key])), key
    assert not (tmp_path / "two" / "checkpoints" / ".staging-epoch-0001").exists()


def test_two_processes_follow_one_process_with_groups_of_images_per_prompt(tmp_path, reward_plugin_folder):
    assert_two_follow_one(train_layout(tmp_path, "groups", reward_plugin_folder), "groups")

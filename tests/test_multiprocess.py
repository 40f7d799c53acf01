"""Two processes on CPU (gloo), launched as a user launches them: ``python -m genrl.launch --num-processes 2``, or
``accelerate launch --multi_gpu --num_processes 2 -m genrl.train`` (tests/test_multiprocess_layouts.py). The layouts
with accumulation, and a failing process, have files of their own (test_multiprocess_layouts.py,
test_multiprocess_failures.py)."""

import pytest

from tests.launching import assert_two_follow_one, train_layout

pytestmark = pytest.mark.usefixtures("tiny_lcm_built")  # tests/conftest.py


@pytest.mark.slow
def test_two_processes_follow_one_process_with_groups_of_images_per_prompt(tmp_path, reward_plugin_folder):
    assert_two_follow_one(train_layout(tmp_path, "groups", reward_plugin_folder), "groups")

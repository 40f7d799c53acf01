import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # several workers share the cores: one thread each (runs too)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tiny pipelines are built once per test session into a private cache."""
    os.environ["GENRL_CACHE"] = str(tmp_path_factory.mktemp("genrl-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_lcm_built(_isolated_cache):
    """The tiny LCM pipeline, built before processes are launched: two that found none would both build it."""
    from genrl.shapes.tiny import tiny_pipeline_dir

    tiny_pipeline_dir(lcm=True)


@pytest.fixture(scope="session")
def reward_plugin_folder(tmp_path_factory):
    """A folder of test rewards (tests/launching.py), importable here and by launched processes."""
    from tests.launching import reward_plugins

    yield from reward_plugins(tmp_path_factory.mktemp("reward-plugins"))


# The slowest files first (measured with --durations): with two workers taking whole files (--dist loadfile), a
# slow file started last leaves one worker running it alone at the end. (xdist would reorder the files by their
# number of tests, which puts the few slow multi-process tests last: pyproject.toml turns that off.)
_SLOW_FILES = (
    "test_train.py",
    "test_multiprocess_failures.py",
    "test_benchmarks.py",
    "test_extensions.py",
    "test_sdxl.py",
    "test_forward_process_plugin.py",
    "test_flux.py",
    "test_sd3.py",
    "test_precision.py",
    "test_multiprocess_layouts.py",
    "test_reliability.py",
    "test_training_maths.py",
    "test_saved_state.py",
    "test_errors.py",
    "test_multiprocess.py",
    "test_pretrain.py",
    "test_best.py",
    "test_reward_server.py",
    "test_shapes_models.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order

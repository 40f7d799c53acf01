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
# number of tests, which puts the few slow multi-process tests last: pyproject.toml turns that off.) The files of
# slow tests alone lead (nothing to run without --slow), then the rest by their cost without --slow.
_COSTLIEST_FILES_FIRST = (
    "test_compile.py",
    "test_multiprocess_failures.py",
    "test_multiprocess_layouts.py",
    "test_gpu_check.py",
    "test_multiprocess.py",
    "test_multinode.py",
    "test_fsdp.py",
    "test_train.py",
    "test_saved_state.py",
    "test_reliability.py",
    "test_reward_server.py",
    "test_errors.py",
    "test_benchmarks.py",
    "test_extensions.py",
    "test_sd3.py",
    "test_training_maths.py",
    "test_shapes_models.py",
    "test_precision.py",
    "test_flow_grpo.py",
    "test_dpo.py",
    "test_envs.py",
    "test_algorithms.py",
    "test_pretrain.py",
    "test_cpu_threads.py",
    "test_nft.py",
    "test_sdxl.py",
    "test_forward_process_plugin.py",
)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (CI runs them)")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_COSTLIEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
    if not config.getoption("--slow"):
        skip = pytest.mark.skip(reason="slow: run with --slow (CI does)")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)

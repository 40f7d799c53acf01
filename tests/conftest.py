import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # several workers share the cores: one thread each
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tiny pipelines are built once per test session into a private cache."""
    os.environ["GENRL_CACHE"] = str(tmp_path_factory.mktemp("genrl-cache"))
    yield

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tiny pipelines are built once per test session into a private cache."""
    os.environ["GENRL_CACHE"] = str(tmp_path_factory.mktemp("genrl-cache"))
    yield

"""--reward strings: built-ins with options, plug-ins by module path or entry point, weighted composites."""

import re
import sys

import pytest
import torch

from genrl.errors import GenrlError
from genrl.rewards import load_reward

IMAGES = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
PROMPTS = ["a", "b", "c"]


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import torch\n"
        "def brightness(images, prompts, metadata):\n    return images.mean(dim=(1, 2, 3))\n"
        "def redness(images, prompts, metadata):\n    return images[:, 0].mean(dim=(1, 2))\n"
        "class Scaled:\n"
        "    def __init__(self, factor='1'):\n        self.factor = float(factor)\n"
        "    def __call__(self, images, prompts, metadata):\n        return self.factor * images.mean(dim=(1, 2, 3))\n"
    )
    dist = tmp_path / "my_rewards-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rewards\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[genrl.rewards]\nscaled = my_rewards:Scaled\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("my_rewards", None)


def test_composite_is_the_weighted_sum_and_keeps_its_parts(plugins):
    reward = load_reward("my_rewards:brightness=0.7, my_rewards:redness=-0.3")
    total, parts = reward.score(IMAGES, PROMPTS, [{}] * 3)
    bright, red = IMAGES.mean(dim=(1, 2, 3)), IMAGES[:, 0].mean(dim=(1, 2))
    torch.testing.assert_close(total, 0.7 * bright - 0.3 * red)
    assert set(parts) == {"my_rewards:brightness", "my_rewards:redness"}
    torch.testing.assert_close(parts["my_rewards:redness"], red)


def test_entry_point_plugins_take_options(plugins):
    reward = load_reward("scaled(factor=3)")
    torch.testing.assert_close(reward(IMAGES, PROMPTS, [{}] * 3), 3 * IMAGES.mean(dim=(1, 2, 3)))
    composite = load_reward("scaled(factor=2)=0.5,jpeg_compressibility=0")
    torch.testing.assert_close(composite(IMAGES, PROMPTS, [{}] * 3), IMAGES.mean(dim=(1, 2, 3)))


@pytest.mark.parametrize(
    "spec,message",
    [
        ("nope", "unknown reward 'nope'"),
        ("jpeg_compressibility(quality=3)", "does not take the options ['quality']"),
        ("jpeg_compressibility=heavy", "is not a number"),
        ("jpeg_compressibility=1,jpeg_compressibility=2", "names a part twice"),
        ("clipscore(model)", "needs a value"),
        ("imagereward", "needs ImageReward.pt of the hub repo THUDM/ImageReward"),  # offline, not in the cache
        ("imagereward(checkpoint=/no/such.pt)", "no checkpoint file '/no/such.pt'"),
        ("hpsv2", "needs HPS_v2.1_compressed.pt of the hub repo xswu/HPSv2"),
        ("hpsv2(version=v2.0)", "needs HPS_v2_compressed.pt of the hub repo xswu/HPSv2"),
        ("hpsv2(version=v3)", "version 'v3' is not one of v2.0, v2.1"),
        ("3 rewards!", "cannot read reward"),
    ],
)
def test_bad_reward_strings(spec, message):
    with pytest.raises(GenrlError, match=re.escape(message)):
        load_reward(spec)


def test_a_failing_part_is_named(plugins, tmp_path):
    (tmp_path / "broken.py").write_text(
        "def nan(images, prompts, metadata):\n    return [float('nan')] * len(prompts)\n"
    )
    reward = load_reward("my_rewards:brightness=1,broken:nan=1")
    with pytest.raises(GenrlError, match="reward 'broken:nan' returned NaN"):
        reward(IMAGES, PROMPTS, [{}] * 3)


def test_module_factories_take_options(plugins):
    reward = load_reward("my_rewards:Scaled(factor=2)")
    torch.testing.assert_close(reward(IMAGES, PROMPTS, [{}] * 3), 2 * IMAGES.mean(dim=(1, 2, 3)))

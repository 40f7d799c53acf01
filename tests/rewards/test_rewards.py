"""JPEG rewards exactly as the reference defines them, and the checks every reward output goes through."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from genrl.errors import GenrlError
from genrl.rewards import CheckedReward, jpeg_compressibility, jpeg_incompressibility, load_reward


def test_jpeg_rewards_are_the_quality_95_size_in_kb():
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images[0] = 0.5  # a flat image compresses far better
    expected = []
    for img in images:
        array = np.clip(np.round(img.permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="JPEG", quality=95)
        expected.append(len(buf.getvalue()) / 1000)
    torch.testing.assert_close(jpeg_incompressibility(images, [""] * 3, [{}] * 3), torch.tensor(expected))
    torch.testing.assert_close(jpeg_compressibility(images, [""] * 3, [{}] * 3), -torch.tensor(expected))
    assert expected[0] < min(expected[1:])


def _check(fn):
    return CheckedReward(fn, "mine")(torch.zeros(2, 3, 8, 8), ["a", "b"], [{}, {}])


def test_checked_reward_accepts_lists_and_arrays():
    assert _check(lambda i, p, m: [1, 2]).dtype == torch.float32
    torch.testing.assert_close(_check(lambda i, p, m: np.array([0.5, 1.5])), torch.tensor([0.5, 1.5]))


@pytest.mark.parametrize(
    "fn,message",
    [
        (lambda i, p, m: [float("nan"), 1.0], "returned NaN for 1 of 2"),
        (lambda i, p, m: [float("inf"), 1.0], "returned inf"),
        (lambda i, p, m: torch.zeros(2, 1), r"shape \(2, 1\)"),
        (lambda i, p, m: [1.0], r"shape \(1,\)"),
        (lambda i, p, m: 1 / 0, "raised ZeroDivisionError"),
        (lambda i, p, m: ["a", "b"], "not numbers"),
    ],
)
def test_checked_reward_names_the_reward_and_the_problem(fn, message):
    with pytest.raises(GenrlError, match=message) as info:
        _check(fn)
    assert "'mine'" in str(info.value) and "\n" not in str(info.value)


def test_load_reward_by_name_and_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "import torch\ndef brightness(images, prompts, metadata):\n    return images.mean(dim=(1, 2, 3))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = load_reward("my_rewards:brightness")
    torch.testing.assert_close(reward(torch.ones(2, 3, 4, 4), ["a", "b"], [{}, {}]), torch.ones(2))
    assert load_reward("jpeg_compressibility").name == "jpeg_compressibility"
    for spec, message in [
        ("nope", "unknown reward 'nope'"),
        ("no_such_mod:f", "cannot import"),
        ("my_rewards:missing", "has no 'missing'"),
    ]:
        with pytest.raises(GenrlError, match=message):
            load_reward(spec)

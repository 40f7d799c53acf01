"""A .jsonl prompt set's records reach the reward as each prompt's metadata, in training and in evaluation."""

import json
import os

import torch

from genrl.train import main
from tests.helpers import fast_args


def recording_reward(images, prompts, metadata):
    """Scores 0, and appends what it was given beside each prompt to $SEEN_FILE (the run imports this module anew)."""
    with open(os.environ["SEEN_FILE"], "a") as seen:
        seen.writelines(json.dumps({"prompt": p, **m}) + "\n" for p, m in zip(prompts, metadata, strict=True))
    return torch.zeros(len(prompts))


def test_each_prompt_arrives_with_its_record(tmp_path, monkeypatch):
    records = [{"prompt": "a red circle", "tag": "colors", "n": 1}, {"prompt": "two blue squares", "tag": "counting"}]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setenv("SEEN_FILE", str(tmp_path / "seen.jsonl"))
    reward = "tests.rewards.test_prompt_metadata:recording_reward"
    evaluations = ["--eval-every", "2", "--eval-size", "4"]
    main(fast_args(tmp_path, "r", "--prompts", str(prompts), "--reward", reward, *evaluations))
    by_prompt = {r["prompt"]: r for r in records}
    seen = [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]
    assert len(seen) == 2 * 4 + 2 * 4  # two epochs of 4 images, two evaluations of 4 (before and after)
    assert all(record == by_prompt[record["prompt"]] for record in seen)

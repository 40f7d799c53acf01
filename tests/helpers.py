"""Shared test set-up: the tiny pipelines and a cheap training configuration."""

from __future__ import annotations

from pathlib import Path

import torch

from genrl.models import load_pipeline

FAST = [
    "--preset",
    "tiny-compression",
    "--epochs",
    "2",
    "--sample-batch-size",
    "4",
    "--batches-per-epoch",
    "1",
    "--num-steps",
    "3",
    "--stat-min-count",
    "2",
    "--log-images-every",
    "1",
    "--eval-every",  # the evaluation set has tests of its own
    "0",
]


def fast_args(tmp_path: Path, name: str = "run", *extra: str) -> list[str]:
    """FAST, and minibatches of 2 where the algorithm (``--algo`` in ``extra``, else PPO) has them."""
    algo = extra[extra.index("--algo") + 1] if "--algo" in extra else "ppo"
    minibatch = [f"--{algo}.train-batch-size", "2"] if algo in ("ppo", "reinforce", "nft") else []
    return [*FAST, *minibatch, "--output-dir", str(tmp_path), "--run-name", name, *extra]


def tiny(env: str = "lcm"):
    return load_pipeline("tiny", env)


def expect_error(capsys, argv: list[str], message: str) -> str:
    """``genrl.train`` on ``argv`` ends with exit 2 and one ``error:`` line containing ``message``."""
    import pytest

    from genrl.train import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0], err[0]
    return err[0]


def logged_metrics(run: Path) -> list[dict]:
    """The records of ``run``'s metrics.jsonl, read as written (no torn-line tolerance)."""
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def metrics_without_timings(run: Path) -> list[dict]:
    """``logged_metrics`` less the timings (``*_time_s``, ``reward_wait_s``): what a seed must reproduce."""
    timing = lambda key: key.endswith("_time_s") or key == "reward_wait_s"
    return [{k: v for k, v in record.items() if not timing(k)} for record in logged_metrics(run)]


def policy_for(kind: str, pipe, guidance_scale: float, reduction: str = "mean", **settings):
    """Family ``kind``'s policy on ``pipe``: its sampler (with ``settings``) paired with the pipeline's adapter."""
    from genrl.envs import make_env
    from genrl.policy import make_policy

    return make_policy(make_env(kind, 1, pipe, None, None, **settings), guidance_scale, reduction)


def tiny_lcm_unet_output(unet) -> torch.Tensor:
    """The tiny LCM UNet's output on fixed inputs (two noisy latents, timesteps, text and w embeddings)."""
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16, generator=generator), torch.tensor([999, 499])
    emb, cond = torch.randn(2, 32, 32, generator=generator), torch.randn(2, 32, generator=generator)
    with torch.no_grad():
        return unet(x, t, emb, timestep_cond=cond).sample

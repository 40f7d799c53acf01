"""How much of an epoch is spent on anything but the UNet passes it cannot avoid.

    python -m benchmarks.overhead [--epochs 4] [--model shapes]

For RLCM (LCM env) and DDPO (DDPM env), with the shapes-* compression presets, runs a few training epochs and
prints per epoch the split into sampling, reward and training, and the overhead ratio: epoch time / bare
compute, where the bare compute is the same number of UNet forward passes (sampling) and forward+backward
passes (training), with the same batch shapes, timed in isolation in the same process.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from genrl.assemble import assemble
from genrl.config import TrainConfig
from genrl.presets import PRESETS
from genrl.train import train


class SlowJpegCompressibility:
    """JPEG compressibility behind a fixed delay: stands in for a heavy reward model or a remote server."""

    def __init__(self, delay: str = "0.25"):
        self.delay = float(delay)

    def __call__(self, images, prompts, metadata):
        from genrl.rewards.jpeg import jpeg_compressibility

        time.sleep(self.delay)
        return jpeg_compressibility(images, prompts, metadata)


@dataclass
class Args:
    epochs: int = 4
    """Training epochs per method (the first includes warm-up)."""
    model: str = "shapes"
    """Model for both methods ('shapes' and 'tiny' pick the LCM or the diffusion pipeline per env)."""
    device: str = "cpu"
    slow_reward_s: float = 0.25
    """Also time RLCM with a reward this slow, computed synchronously and in the background (0: skip)."""


def unet_passes(cfg: TrainConfig, num_stochastic_steps: int, embedded_guidance: bool) -> tuple[list[int], list[int]]:
    """Batch sizes of every UNet pass an epoch makes: forward-only (sampling), forward+backward (training)."""
    # Classifier-free guidance doubles the batch unless the model takes guidance as an embedding (an LCM).
    cfg_factor = 2 if not embedded_guidance and cfg.guidance_scale > 1 else 1
    sampling = [cfg.sample_batch_size * cfg_factor] * (cfg.batches_per_epoch * cfg.num_steps)
    training = []
    settings = cfg.algo_config  # PPO's or REINFORCE's minibatch loop
    minibatches = cfg.samples_per_epoch // settings.train_batch_size
    for _ in range(getattr(settings, "inner_epochs", 1) * minibatches):
        for start in range(0, num_stochastic_steps, settings.steps_per_forward):
            steps = min(settings.steps_per_forward, num_stochastic_steps - start)
            training.append(settings.train_batch_size * steps * cfg_factor)
    return sampling, training


def bare_compute_seconds(cfg: TrainConfig) -> tuple[float, float, float]:
    """Time exactly the UNet passes of an epoch (``unet_passes``) on random inputs of the right shapes; also the
    epoch's VAE decodes, which are not part of the bare compute but explain much of what is left."""
    # The env the run trained on, for its shapes and for which of its steps are stochastic (and so trained).
    parts = assemble(cfg, score_in_env=False)
    pipe, env, unet = parts.pipeline, parts.env, parts.pipeline.unet
    sampling, training = unet_passes(cfg, sum(env.stochastic), env.adapter.embedded_guidance)
    latent_shape = env.latent_shape
    text_shape = env.single_observation_space["prompt_embeds"].shape
    cond_dim = unet.config.time_cond_proj_dim

    def run(batch: int) -> torch.Tensor:
        kwargs = {"timestep_cond": torch.randn(batch, cond_dim, device=cfg.device)} if cond_dim else {}
        return unet(
            torch.randn(batch, *latent_shape, device=cfg.device),
            torch.randint(0, 1000, (batch,), device=cfg.device),
            torch.randn(batch, *text_shape, device=cfg.device),
            **kwargs,
        ).sample

    with torch.no_grad():
        run(sampling[0])  # warm-up
        latents = torch.randn(cfg.sample_batch_size, *latent_shape, device=cfg.device)
        vae = pipe.vae
        start = time.perf_counter()
        for _ in range(cfg.batches_per_epoch):
            vae.decode(latents / vae.config.scaling_factor)
        decode = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for batch in sampling:
            run(batch)
    middle = time.perf_counter()
    for batch in training:
        run(batch).float().mean().backward()
    return middle - start, time.perf_counter() - middle, decode


def measure(name: str, cfg: TrainConfig) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        run = train(dataclasses.replace(cfg, output_dir=Path(out), run_name=name, eval_every=0))
        metrics = run.read_metrics()
    bare_sample, bare_train, decode = bare_compute_seconds(cfg)
    bare = bare_sample + bare_train
    rows, previous = [], 0.0
    for m in metrics:
        epoch_time = m["wall_time_s"] - previous
        previous = m["wall_time_s"]
        rows.append(
            {
                **m,
                "epoch_time_s": epoch_time,
                "bare_sample_s": bare_sample,
                "bare_train_s": bare_train,
                "decode_s": decode,
                "bare_s": bare,
                "overhead": epoch_time / bare,
            }
        )
    return rows


def main(args: Args) -> None:
    methods = {
        "RLCM": dataclasses.replace(PRESETS["shapes-rlcm-compression"], epochs=args.epochs, model=args.model),
        "DDPO": dataclasses.replace(PRESETS["shapes-ddpo-compression"], epochs=args.epochs, model=args.model),
    }
    summary = {}
    for name, cfg in methods.items():
        cfg = dataclasses.replace(cfg, device=args.device)
        rows = measure(name, cfg)
        print(
            f"\n{name}: env={cfg.env} H={cfg.num_steps} batch={cfg.sample_batch_size}x{cfg.batches_per_epoch} "
            f"finetune={cfg.finetune}"
        )
        print(
            f"bare compute: sampling {rows[0]['bare_sample_s']:.3f} s + training {rows[0]['bare_train_s']:.3f} s "
            f"(VAE decodes, not counted: {rows[0]['decode_s']:.3f} s)"
        )
        print(
            f"{'epoch':>5} {'sample_s':>9} {'reward_s':>9} {'train_s':>8} {'epoch_s':>8} {'bare_s':>7} {'overhead':>8}"
        )
        for r in rows:
            print(
                f"{r['epoch']:>5} {r['sample_time_s']:>9.3f} {r['reward_time_s']:>9.3f} {r['train_time_s']:>8.3f} "
                f"{r['epoch_time_s']:>8.3f} {r['bare_s']:>7.3f} {r['overhead']:>8.3f}"
            )
        steady = [r["overhead"] for r in rows[1:]] or [rows[0]["overhead"]]
        summary[name] = statistics.median(steady)
    print("\noverhead ratio (median over epochs after the first; goal <= 1.15):")
    for name, ratio in summary.items():
        print(f"  {name}: {ratio:.3f}" + ("" if ratio <= 1.15 else "  (above goal)"))
    if not all(math.isfinite(v) for v in summary.values()):
        raise SystemExit(1)
    if args.slow_reward_s > 0:
        compare_async_rewards(dataclasses.replace(methods["RLCM"], device=args.device), args.slow_reward_s)


def compare_async_rewards(cfg: TrainConfig, delay: float) -> None:
    cfg = dataclasses.replace(cfg, reward=f"benchmarks.overhead:SlowJpegCompressibility(delay={delay})")
    times = {}
    for mode in (False, True):
        with tempfile.TemporaryDirectory() as out:
            run = train(dataclasses.replace(cfg, async_rewards=mode, output_dir=Path(out), run_name="async"))
            metrics = run.read_metrics()
        walls = [m["wall_time_s"] for m in metrics]
        times[mode] = statistics.median([b - a for a, b in zip(walls, walls[1:])])
    print(
        f"\nRLCM with a reward that takes {delay:.2f} s per batch of {cfg.sample_batch_size} "
        f"({cfg.batches_per_epoch} batches per epoch), median epoch time:"
    )
    print(
        f"  synchronous {times[False]:.3f} s, background (--async-rewards) {times[True]:.3f} s: "
        f"saves {times[False] - times[True]:.3f} s per epoch ({times[False] / times[True]:.2f}x)"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))

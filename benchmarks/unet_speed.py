"""The UNet passes an epoch is made of, timed under the CPU speed settings a library offers, as ratios to eager.

    python -m benchmarks.unet_speed [--preset shapes-rlcm-compression] [--modes eager channels-last compile]
        [--threads 2 1] [--repeats 20]

A sampling forward pass (the preset's sampling batch, no graph) and a training forward+backward pass (its
minibatch), on the preset's model with its LoRA, each run ``--repeats`` times after two warm-up passes (which
include torch.compile's compilation, reported apart). Wall-clock and process CPU time per pass; ratios to eager
at the same thread count (above 1: faster). Attention already runs through PyTorch's SDPA (diffusers'
``AttnProcessor2_0``), which the script prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from genrl.assemble import assemble
from genrl.config import setting
from genrl.presets import preset


@dataclass
class Args:
    preset: str = "shapes-rlcm-compression"
    modes: list[str] = field(default_factory=lambda: ["eager", "channels-last"])
    """eager, channels-last (memory format of the UNet and its inputs), compile (torch.compile of the UNet)."""
    threads: list[int] = field(default_factory=lambda: [2, 1])
    repeats: int = 20


def _timed(fn, repeats: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def measure(args: Args, mode: str, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    cfg = preset(args.preset)
    parts = assemble(cfg)
    unet = parts.pipeline.unet
    sample, train = cfg.sample_batch_size, setting(cfg, "train_batch_size")
    shape = (sample, *parts.env.latent_shape)
    memory = torch.channels_last if mode == "channels-last" else torch.contiguous_format
    latents = torch.randn(shape).to(memory_format=memory)
    unet.to(memory_format=memory)
    if mode == "compile":
        unet = torch.compile(unet)
    timestep = torch.full((sample,), 500)
    embeds = parts.env.encode_prompts(["a red circle"] * sample)
    cond_dim = parts.pipeline.unet.config.time_cond_proj_dim  # an LCM's guidance embedding
    extra = {"timestep_cond": torch.randn(sample, cond_dim)} if cond_dim else {}

    def forward() -> None:
        with torch.no_grad():
            unet(latents, timestep, embeds, **extra)

    def forward_backward() -> None:
        rows = {k: v[:train] for k, v in extra.items()}
        unet(latents[:train], timestep[:train], embeds[:train], **rows).sample.square().mean().backward()

    start = time.perf_counter()
    for _ in range(2):
        forward()
        forward_backward()
    warm_up = time.perf_counter() - start
    (fwd_wall, fwd_cpu), (fb_wall, fb_cpu) = _timed(forward, args.repeats), _timed(forward_backward, args.repeats)
    return {"warm_up_s": warm_up, "fwd_wall": fwd_wall, "fwd_cpu": fwd_cpu, "fb_wall": fb_wall, "fb_cpu": fb_cpu}


def main(args: Args) -> None:
    parts = assemble(preset(args.preset))
    processors = {type(p).__name__ for p in parts.pipeline.unet.attn_processors.values()}
    print(f"{args.preset}: attention processors {', '.join(sorted(processors))}")
    print("| mode | threads | warm-up s | forward ms (CPU ms) | fwd+bwd ms (CPU ms) | speed vs eager (fwd, fwd+bwd) |")
    print("|---|---|---|---|---|---|")
    for threads in args.threads:
        eager = None
        for mode in args.modes:
            m = measure(args, mode, threads)
            eager = eager or (m if mode == "eager" else None)
            speed = (
                f"{eager['fwd_wall'] / m['fwd_wall']:.2f}x, {eager['fb_wall'] / m['fb_wall']:.2f}x" if eager else "-"
            )
            print(
                f"| {mode} | {threads} | {m['warm_up_s']:.1f} | {m['fwd_wall'] * 1e3:.1f} ({m['fwd_cpu'] * 1e3:.1f}) "
                f"| {m['fb_wall'] * 1e3:.1f} ({m['fb_cpu'] * 1e3:.1f}) | {speed} |",
                flush=True,
            )


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))

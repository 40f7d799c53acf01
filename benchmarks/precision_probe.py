"""Peak memory and speed of one PPO update at the paper's scale, in fp32 and under ``--mixed-precision``.

    python -m benchmarks.precision_probe [--configs sd15 lcm sd35] [--precisions fp32 bf16] [--batch-size 1]
        [--resolution 512] [--repeats 2] [--device cpu] [--output results.json]

Denoisers at full size with random weights, built from their published configs (nothing is downloaded): Stable
Diffusion 1.5's UNet (860M parameters; DDPO's model, ``ddpo-*`` presets: LoRA rank 4, alpha 4, DDIM),
LCM_Dreamshaper_v7's (the same plus a 256-dim guidance embedding; RLCM's, ``rlcm-*`` presets: LoRA rank 16, alpha
32) and Stable Diffusion 3.5 Medium's MMDiT transformer (2.2B; Flow-GRPO's, ``flow-grpo-*`` presets: LoRA rank 32,
alpha 64 on both streams of every joint attention, the flow SDE with noise level 0.7, guidance 4.5 by a doubled
batch, and the KL to the model without its LoRA, beta 0.04). For each denoiser and precision, genrl's own code path:
``add_lora``, ``precision.cast_frozen`` (the frozen weights to the half dtype, the LoRA fp32), the family's policy
(whose ``denoise`` runs the denoiser under autocast and casts its output to fp32), then PPO updates as genrl's: the
step's fp32 log-prob of a sampled action, the clipped surrogate loss against the sampling pass's detached log-prob
(plus the preset's KL term, if any), backward (fp16: through ``LossScaling``) and ``optimizer_step`` with AdamW (the
preset's settings). Latents (B, C, R/8, R/8) and text embeddings are fp32, as genrl's env holds them: (B, 77, 768) for
the UNets, and for SD3.5 CLIP's 77 and T5's 256 tokens plus the pooled row, 4096 wide (``families.flow.pack_text``).
Classifier-free guidance for SD 1.5 is off by default (``--ddpm-guidance-scale 1``): both UNets then run one pass of
batch B; DDPO's 5 doubles the UNet batch.

Each (denoiser, precision) runs in a fresh process, so that peaks do not mix. Memory:

- CPU: the resident set before the update (after building, casting and one sampling pass; freed heap trimmed), and
  the peak resident set over the updates (VmHWM, reset just before them). The process's peak over its whole life
  (``ru_maxrss`` read before that reset) is reported too: it includes building the fp32 UNet before the cast, which
  genrl pays as well, whatever the precision.
- CUDA: ``torch.cuda.max_memory_allocated`` over the updates (peak statistics reset before them).

Time: one warm-up forward+backward (the update whose peak is read first), then the median of ``--repeats`` timed
forward+backward passes (the optimizer step, which is negligible next to them, is taken between them untimed); wall
time and the process's CPU time (all threads) beside it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import tyro

Precision = Literal["fp32", "bf16", "fp16"]

GENRL_SETTING: dict[str, str] = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
"""The probe's precision names and ``--mixed-precision``'s."""

# Stable Diffusion 1.5's unet/config.json (runwayml/stable-diffusion-v1-5), every key diffusers reads.
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
}

# SimianLuo/LCM_Dreamshaper_v7's unet/config.json: SD 1.5's architecture with the guidance (w) embedding.
LCM_DREAMSHAPER_UNET: dict[str, Any] = {**SD15_UNET, "time_cond_proj_dim": 256}

# The same kinds of blocks, a few hundred thousand parameters: a smoke check (``--configs tiny-sd tiny-lcm
# --resolution 64``) and the tests'.
TINY_SD_UNET: dict[str, Any] = {
    **SD15_UNET,
    "sample_size": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
}
TINY_LCM_UNET: dict[str, Any] = {**TINY_SD_UNET, "time_cond_proj_dim": 32}

# stabilityai/stable-diffusion-3.5-medium's transformer/config.json: the MMDiT-X, dual attention in blocks 0-12.
SD35_MEDIUM_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
TINY_SD35_TRANSFORMER: dict[str, Any] = {
    **SD35_MEDIUM_TRANSFORMER,
    "sample_size": 8,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 16,
    "pos_embed_max_size": 16,
    "dual_attention_layers": (0,),
}

CONFIGS: dict[str, dict[str, Any]] = {
    "sd15": SD15_UNET,
    "lcm": LCM_DREAMSHAPER_UNET,
    "sd35": SD35_MEDIUM_TRANSFORMER,
    "tiny-sd": TINY_SD_UNET,
    "tiny-lcm": TINY_LCM_UNET,
    "tiny-sd35": TINY_SD35_TRANSFORMER,
}
"""``--configs``' names."""

PRESET_OF_FAMILY = {"lcm": "rlcm-compression", "ddpm": "ddpo-compression", "flow": "flow-grpo-compression"}
"""The paper-scale preset whose LoRA, optimizer, PPO and sampling settings a denoiser's family is probed with."""

# One training pair: the LCM's first step of a 4-step trajectory; a middle step of DDPO's 50 DDIM steps. The flow
# family's is a middle step of its preset's schedule (``training_pair``).
TIMESTEPS = {"lcm": (999, 759), "ddpm": (501, 481)}

CLIP_TOKENS = 77
"""CLIP's sequence length: the UNets' text embeddings are (B, 77, cross_attention_dim)."""
SD3_T5_TOKENS = 256
"""The T5 tokens of diffusers' SD3 pipeline (``max_sequence_length``), after CLIP's in the flow family's embeddings."""

# SD3.5 Medium's scheduler/scheduler_config.json: the FlowMatchEulerDiscreteScheduler with shift 3.
SD35_SHIFT = 3.0


@dataclass
class Args:
    configs: tuple[Literal["sd15", "lcm", "sd35", "tiny-sd", "tiny-lcm", "tiny-sd35"], ...] = ("sd15", "lcm")
    precisions: tuple[Precision, ...] | None = None
    """Default: fp32 and bf16, and fp16 on CUDA."""
    batch_size: int = 1
    resolution: int = 512
    """Image side in pixels; the latents are 8x smaller."""
    repeats: int | None = None
    """Timed forward+backward passes after the warm-up (default: 2 on CPU, 5 on CUDA)."""
    device: str = "cpu"
    ddpm_guidance_scale: float = 1.0
    """Classifier-free guidance of the SD 1.5 (DDPM family) update; above 1 doubles its UNet batch (DDPO: 5). The
    LCM's and the flow transformer's are their presets' (8 as an embedding; 4.5 by a doubled batch)."""
    threads: int | None = None
    """torch's intra-op threads in each case's process (default: torch's)."""
    output: Path | None = None
    """Also write the results as JSON here."""
    case: str | None = None
    """Internal: run one case, CONFIG:PRECISION, in this process and print its result as JSON."""


def family_of(config: dict[str, Any]) -> str:
    """The policy family of a denoiser config: ``flow`` for an SD3 transformer, ``lcm`` for a UNet with a guidance
    embedding, ``ddpm`` for other UNets."""
    if "joint_attention_dim" in config:
        return "flow"
    return "lcm" if config.get("time_cond_proj_dim") else "ddpm"


def build_denoiser(config: dict[str, Any], device: str = "cpu") -> torch.nn.Module:
    """An ``SD3Transformer2DModel`` or a ``UNet2DConditionModel`` from ``config`` with random weights, fp32."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    model = SD3Transformer2DModel if family_of(config) == "flow" else UNet2DConditionModel
    with torch.device(device):  # initialised where it runs: 2.2B random weights take a while on a CPU
        return model(**config)


class StandInPipeline:
    """What genrl's ``cast_frozen`` and policy builders read of a diffusers pipeline: the denoiser (as ``transformer``
    or ``unet``, where ``genrl.denoiser`` looks), a VAE and a text encoder (empty here: the update runs the denoiser
    alone), the scheduler, and the LCM pipeline's guidance embedding."""

    def __init__(self, net: torch.nn.Module, scheduler: Any, transformer: bool = False):
        if transformer:
            self.transformer = net
        else:
            self.unet = net
        self.scheduler = scheduler
        self.vae = torch.nn.Module()
        self.text_encoder = torch.nn.Module()

    def get_guidance_scale_embedding(self, w: torch.Tensor, embedding_dim: int = 512) -> torch.Tensor:
        from diffusers import LatentConsistencyModelPipeline

        return LatentConsistencyModelPipeline.get_guidance_scale_embedding(self, w, embedding_dim=embedding_dim)


def make_scheduler(family: str) -> Any:
    """The family's scheduler: SD3.5's flow-matching Euler scheduler, or Stable Diffusion's noise schedule (scaled
    linear, 0.00085 to 0.012)."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, LCMScheduler

    if family == "flow":
        return FlowMatchEulerDiscreteScheduler(shift=SD35_SHIFT)
    if family == "lcm":
        return LCMScheduler()  # its defaults are SD's schedule and the LCM's 50-step origin grid
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def training_pair(family: str, scheduler: Any, num_steps: int, latent_side: int, patch_size: int) -> tuple:
    """The (timestep, next timestep) of the probed step: ``TIMESTEPS``' for the UNets; for the flow family the
    sigmas of the middle step of its ``num_steps``-step schedule (an SDE step with finite noise)."""
    if family != "flow":
        return TIMESTEPS[family]
    from genrl.adapters.sd3 import SD3Adapter
    from genrl.samplers.flow_sde import flow_sigmas

    options = SD3Adapter.flow_schedule_options(None, scheduler.config, num_steps, latent_side)  # SD3.5: no shift
    sigmas = flow_sigmas(scheduler.config, num_steps, **options)
    middle = num_steps // 2
    return sigmas[middle], sigmas[middle + 1]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_freed_memory() -> None:
    """Collect garbage and hand the allocator's free heap back, so that the resident set holds what is live."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident set (Linux); False where this kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line for line in lines if line.startswith("model name")]
    return names[0].split(":", 1)[1].strip() if names else platform.processor() or platform.machine()


def _mib_of_kb(kb: int) -> float:
    return kb / 1024


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def probe_case(
    net_config: dict[str, Any],
    precision: Precision,
    batch_size: int = 1,
    resolution: int = 512,
    repeats: int = 2,
    device: str = "cpu",
    ddpm_guidance_scale: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the denoiser, set it up as genrl does for ``precision``, and measure PPO updates on it (module
    docstring). The family (``family_of``), and with it the preset's settings, follows from the config."""
    from genrl.adapters import adapter_for
    from genrl.algos.common import optimizer_step
    from genrl.algos.ppo import clipped_surrogate_loss
    from genrl.config_sampler import sampler_options
    from genrl.envs.make import build_sampler
    from genrl.policy import DenoisingPolicy, add_lora
    from genrl.precision import LossScaling, cast_frozen, half_dtype
    from genrl.presets import preset

    cuda = torch.device(device).type == "cuda"
    family = family_of(net_config)
    flow = family == "flow"
    cfg = preset(PRESET_OF_FAMILY[family])
    ppo = cfg.algo_config
    setting = GENRL_SETTING[precision]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    torch.manual_seed(seed)

    net = build_denoiser(net_config, device)
    add_lora(net, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules)
    pipeline = StandInPipeline(net, make_scheduler(family), transformer=flow)
    half = half_dtype(setting)
    cast_frozen(pipeline, half)
    guidance = ddpm_guidance_scale if family == "ddpm" else cfg.guidance_scale
    settings = sampler_options(cfg)
    sampler = build_sampler(settings.pop("sampler"), pipeline.scheduler, **settings)
    policy = DenoisingPolicy(adapter_for(pipeline), sampler, guidance, cfg.logprob_reduction)
    policy.autocast_dtype = half
    params = policy.trainable_parameters()
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
        fused=torch.device(device).type in ("cpu", "cuda"),
    )
    scaling = LossScaling(setting, device)

    # The training pair, as the env holds it: fp32 latents and embeddings (the flow family's packed: tokens, then
    # the pooled row).
    latent_side = resolution // 8
    generator = torch.Generator().manual_seed(seed)
    patch = net_config.get("patch_size", 1)
    t, t_next = training_pair(family, pipeline.scheduler, cfg.num_steps, latent_side, patch)
    tokens, width = (
        (CLIP_TOKENS + SD3_T5_TOKENS + 1, net_config["joint_attention_dim"])
        if flow
        else (CLIP_TOKENS, net_config["cross_attention_dim"])
    )
    embeds = torch.randn(batch_size, tokens, width, generator=generator)
    timestep_dtype = torch.float32 if flow else torch.long
    obs = {
        "latents": torch.randn(batch_size, net_config["in_channels"], latent_side, latent_side, generator=generator),
        "timestep": torch.full((batch_size,), t, dtype=timestep_dtype),
        "next_timestep": torch.full((batch_size,), t_next, dtype=timestep_dtype),
        "stochastic": torch.ones(batch_size, dtype=torch.bool),
        "prompt_embeds": embeds,
        "negative_prompt_embeds": torch.zeros_like(embeds),
    }
    obs = {key: value.to(device) for key, value in obs.items()}
    advantages = torch.randn(batch_size, generator=generator).to(device)

    # The sampling pass: the action and the old log-prob that PPO's ratio divides by.
    policy.eval()
    action, old_log_prob = policy.act(obs, generator)
    next_latents = action["next_latents"]
    del action
    policy.train()

    def forward_backward() -> dict[str, Any]:
        dist = policy.distribution(obs)
        log_prob = policy.action_log_prob(dist, next_latents)
        loss, ratio = clipped_surrogate_loss(log_prob, old_log_prob, advantages, ppo.clip_range, ppo.adv_clip_max)
        if ppo.kl_coef > 0:  # as PPO's update: the KL to the model with its LoRA off, in the preset's form
            loss = loss + ppo.kl_coef * policy.kl_to_reference(obs, dist, ppo.kl_form).mean()
        scaling.backward(loss)
        return {
            "prediction_dtype": str(dist.mean.dtype),
            "log_prob_dtype": str(log_prob.dtype),
            "loss": loss.item(),
            "ratio_mean": ratio.mean().item(),
        }

    result: dict[str, Any] = {
        "family": family,
        "precision": precision,
        "batch_size": batch_size,
        "resolution": resolution,
        "latent_shape": [batch_size, net_config["in_channels"], latent_side, latent_side],
        "device": device,
        "threads": torch.get_num_threads(),
        "preset": PRESET_OF_FAMILY[family],
        "guidance_scale": guidance,
        "lora_rank": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "kl_coef": ppo.kl_coef,
        "denoiser_params_m": sum(p.numel() for p in net.parameters() if not p.requires_grad) / 1e6,
        "lora_params_m": sum(p.numel() for p in params) / 1e6,
        "frozen_dtypes": sorted({str(p.dtype) for p in net.parameters() if not p.requires_grad}),
        "trainable_dtypes": sorted({str(p.dtype) for p in params}),
    }

    _release_freed_memory()
    if cuda:
        torch.cuda.synchronize()
        result["memory_kind"] = "cuda_max_memory_allocated"
        result["before_mib"] = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        result["memory_kind"] = "rss"
        result["before_mib"] = _mib_of_kb(_status_kb("VmRSS"))
        # ru_maxrss is the process's VmHWM (which the reset below lowers): read the building's peak first.
        result["process_peak_mib"] = _mib_of_kb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        result["peak_reset"] = _reset_peak_rss()

    walls, cpus = [], []
    for i in range(1 + repeats):
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        stats = forward_backward()
        _sync(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if i == 0:  # the warm-up: also the update whose gradients are checked
            grads = [p.grad for p in params]
            result.update(stats)
            result["first_wall_s"], result["first_cpu_s"] = wall, cpu
            result["grad_dtypes"] = sorted({str(g.dtype) for g in grads if g is not None})
            result["grads_missing"] = sum(g is None for g in grads)
            result["grads_finite"] = all(bool(torch.isfinite(g).all()) for g in grads if g is not None)
            del grads
        else:
            walls.append(wall)
            cpus.append(cpu)
        step = optimizer_step(params, optimizer, ppo.max_grad_norm, None, scaling)
        if i == 0:
            result["grad_norm"] = step.get("grad_norm", float("nan"))

    if cuda:
        torch.cuda.synchronize()
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        ru_maxrss = _mib_of_kb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        result["process_peak_mib"] = max(result["process_peak_mib"], ru_maxrss)
        # Without the reset, the updates' peak is not told apart from the building's: the process's is all there is.
        result["peak_mib"] = _mib_of_kb(_status_kb("VmHWM")) if result["peak_reset"] else ru_maxrss
    result["peak_increase_mib"] = result["peak_mib"] - result["before_mib"]
    result["wall_s"] = statistics.median(walls) if walls else result["first_wall_s"]
    result["cpu_s"] = statistics.median(cpus) if cpus else result["first_cpu_s"]
    result["wall_s_all"], result["cpu_s_all"] = walls, cpus
    return result


def run_case(args: Args, config: str, precision: str) -> dict[str, Any]:
    """``probe_case`` in a fresh process; an error (e.g. the process killed for memory) is returned, not raised."""
    argv = [sys.executable, "-m", "benchmarks.precision_probe", "--case", f"{config}:{precision}"]
    argv += ["--batch-size", str(args.batch_size), "--resolution", str(args.resolution), "--device", args.device]
    argv += ["--repeats", str(args.repeats), "--ddpm-guidance-scale", str(args.ddpm_guidance_scale)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True)  # stderr (progress, warnings) passes through
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"config": config, "precision": precision, "error": f"exit status {done.returncode}"}
    return {"config": config, **json.loads(lines[-1]), "case_s": time.perf_counter() - start}


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def summarise(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per UNet config and half precision: its peak and time next to fp32's, and their ratios."""
    by_key = {(c["config"], c["precision"]): c for c in cases if "error" not in c}
    rows = []
    for config in dict.fromkeys(c["config"] for c in cases):
        full = by_key.get((config, "fp32"))
        for precision in ("bf16", "fp16"):
            half = by_key.get((config, precision))
            if full is None or half is None:
                continue
            rows.append(
                {
                    "config": config,
                    "precision": precision,
                    "fp32_peak_mib": full["peak_mib"],
                    "half_peak_mib": half["peak_mib"],
                    "peak_ratio": half["peak_mib"] / full["peak_mib"],
                    "fp32_wall_s": full["wall_s"],
                    "half_wall_s": half["wall_s"],
                    "wall_ratio": half["wall_s"] / full["wall_s"],
                    "fp32_cpu_s": full["cpu_s"],
                    "half_cpu_s": half["cpu_s"],
                    "cpu_ratio": half["cpu_s"] / full["cpu_s"],
                }
            )
    return rows


def print_tables(cases: list[dict[str, Any]], summary: list[dict[str, Any]], args: Args) -> None:
    memory = "peak RSS" if torch.device(args.device).type == "cpu" else "peak allocated"
    print(
        f"\nOne PPO update (forward+backward), batch {args.batch_size}, {args.resolution} px, device {args.device}, "
        f"median of {args.repeats} after a warm-up; memory: {memory} over the updates (MiB)\n"
    )
    print(
        f"| config | half | fp32 {memory} | half {memory} | half / fp32 | fp32 wall s (CPU s) | "
        "half wall s (CPU s) | half / fp32 wall (CPU) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        print(
            f"| {r['config']} | {r['precision']} | {r['fp32_peak_mib']:.0f} | {r['half_peak_mib']:.0f} | "
            f"{r['peak_ratio']:.2f}x | {r['fp32_wall_s']:.3g} ({r['fp32_cpu_s']:.3g}) | "
            f"{r['half_wall_s']:.3g} ({r['half_cpu_s']:.3g}) | {r['wall_ratio']:.2f}x ({r['cpu_ratio']:.2f}x) |"
        )
    print("\nEvery case (before: after building, casting and sampling; process peak: ru_maxrss, with the build):\n")
    print(
        "| config | precision | LoRA r/alpha | before MiB | peak MiB | increase MiB | process peak MiB | "
        "warm-up wall s | wall s | CPU s | loss | grad norm |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cases:
        if "error" in c:
            print(f"| {c['config']} | {c['precision']} | failed: {c['error']} |")
            continue
        process_peak = c.get("process_peak_mib")
        print(
            f"| {c['config']} | {c['precision']} | {c['lora_rank']}/{c['lora_alpha']:g} | {c['before_mib']:.0f} | "
            f"{c['peak_mib']:.0f} | {c['peak_increase_mib']:.0f} | "
            f"{'-' if process_peak is None else f'{process_peak:.0f}'} | {c['first_wall_s']:.3g} | "
            f"{c['wall_s']:.3g} | {c['cpu_s']:.3g} | {c['loss']:.3g} | {c['grad_norm']:.3g} |"
        )


def main(args: Args) -> None:
    cuda = torch.device(args.device).type == "cuda"
    if args.repeats is None:
        args.repeats = 5 if cuda else 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.case is not None:
        config, precision = args.case.split(":")
        result = probe_case(
            CONFIGS[config],
            precision,  # type: ignore[arg-type]
            args.batch_size,
            args.resolution,
            args.repeats,
            args.device,
            args.ddpm_guidance_scale,
        )
        print(json.dumps(result))
        return
    precisions = args.precisions or (("fp32", "bf16", "fp16") if cuda else ("fp32", "bf16"))
    start = time.perf_counter()
    cases = []
    for config in args.configs:
        for precision in precisions:
            print(f"[precision_probe] {config} {precision} ...", file=sys.stderr, flush=True)
            cases.append(run_case(args, config, precision))
    summary = summarise(cases)
    print_tables(cases, summary, args)
    total = time.perf_counter() - start
    print(f"\ntotal {total:.0f} s")
    if args.output is not None:
        meta = {
            "command": " ".join(["python -m benchmarks.precision_probe", *sys.argv[1:]]),
            "device": torch.cuda.get_device_name(args.device) if cuda else _cpu_name(),
            "threads": args.threads or torch.get_num_threads(),
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "total_s": total,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"meta": meta, "cases": cases, "summary": summary}, indent=2) + "\n")
    if any("error" in c for c in cases):
        raise SystemExit(1)


if __name__ == "__main__":
    main(tyro.cli(Args))

"""The GPU check: one command for a GPU's first minutes, one JSON and one short table.

    python -m benchmarks.gpu_check --output-dir gpu-check                 # one CUDA GPU, about 8 min (--budget-s 480)
    python -m benchmarks.gpu_check --output-dir gpu-check-dry --dry-run   # the same code path on a CPU, tiny sizes

Three parts, in this order, each in its own process with a timeout:

1. **tests**: the test files that mention CUDA (``tests/**/test_*.py`` whose text says ``cuda``), their tests whose
   names say ``cuda`` (``pytest -k cuda``): pass, fail and skip counts from pytest's JUnit XML.
2. **epochs**: one PPO epoch of each family at the published sizes with random weights, in fp16 and bf16
   (``--mixed-precision``), through genrl's own ``train.build`` and ``train.run_epoch``: RLCM on LCM_Dreamshaper_v7's
   UNet (SD 1.5's with the 256-dim guidance embedding; ``rlcm-compression``), DDPO on SD 1.5's UNet
   (``ddpo-compression``), Flow-GRPO on SD 3.5 Medium's MMDiT (``flow-grpo-compression``), all at 512 px. The
   denoisers are built from their published config.json values (``benchmarks.precision_probe``); so are the VAEs and
   the text encoders (CLIP ViT-L; for SD 3.5 also OpenCLIP bigG and T5-XXL), whose vocabularies alone are stand-ins:
   nothing is downloaded, and genrl's byte-level tokenizers (``genrl.shapes``) take the real ones' place, with
   CLIP's 77 tokens and T5's 256. ``--small-text-encoders`` swaps the text encoders for one-layer ones of the same
   widths (T5-XXL alone is 4.7B parameters): the denoiser's timing is what matters, the prompts are encoded once a
   batch. An epoch is the preset's sampling batch, one batch (``--batches-per-epoch``, the presets have 1, 4 and 8),
   trained as one optimizer step; ``--epochs`` epochs (2: the first is the warm-up, the rates are the last's).
   Reported: images per second of sampling (the steps and the VAE decode) and of the update, the peak
   ``torch.cuda.max_memory_allocated`` over the epochs, and the denoiser passes per image of each, with the official
   code's for the same settings beside them (``OFFICIAL``).
3. **suite**: the shapes quick suite (``python -m benchmarks.run --suite shapes --quick``) on the GPU, with its
   ratios per task, in ``<output-dir>/suite`` (resumable: the same command continues it).

``--budget-s``: a part is not started when less time is left than its minimum (``min_s``), and every part runs
under a timeout of the time left; what was skipped or stopped is recorded, with why. ``--dry-run`` runs the same
parts on the CPU at tiny sizes (tiny configs, 2 steps, batches of 2, one thread a process) within a 60 s budget, which
stops its suite (``dry_suite_flags``). Written to ``--output-dir``: ``gpu_check.json``, ``gpu_check.md`` (the table,
also printed), ``logs/`` (each part's output) and ``cases/`` (each epoch case's JSON).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from benchmarks.precision_probe import (
    LCM_DREAMSHAPER_UNET,
    PRESET_OF_FAMILY,
    SD15_UNET,
    SD35_MEDIUM_TRANSFORMER,
    TINY_LCM_UNET,
    TINY_SD35_TRANSFORMER,
    TINY_SD_UNET,
)

Family = Literal["lcm", "ddpm", "flow"]
Half = Literal["fp16", "bf16"]
FAMILIES: tuple[Family, ...] = ("lcm", "ddpm", "flow")
REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------------
# The published configurations (config.json values; every key diffusers or transformers reads that differs from
# its default). The denoisers' are benchmarks.precision_probe's.
# --------------------------------------------------------------------------------------------------
# runwayml/stable-diffusion-v1-5 vae/config.json (LCM_Dreamshaper_v7's and Dreamshaper 7's are the same).
SD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
# stabilityai/stable-diffusion-3.5-medium vae/config.json: 16 latent channels, no quant convs, scale and shift.
SD35_VAE: dict[str, Any] = {
    **SD_VAE,
    "latent_channels": 16,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
# openai/clip-vit-large-patch14's text model (SD 1.5's text_encoder; SD 3.5's text_encoder, with its projection).
CLIP_L_TEXT: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
# SD 3.5's text_encoder_2: OpenCLIP ViT-bigG/14's text model, with its projection.
CLIP_G_TEXT: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
# SD 3.5's text_encoder_3: google/t5-v1_1-xxl's encoder.
T5_XXL: dict[str, Any] = {
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
}
CLIP_TOKENS = 77
SD35_SHIFT = 3.0  # stable-diffusion-3.5-medium scheduler/scheduler_config.json

# Tiny stand-ins of the same kinds (--dry-run), 64 px: the VAEs downsample by 8 like the real ones.
TINY_VAE: dict[str, Any] = {
    **SD_VAE,
    "block_out_channels": (8, 8, 8, 8),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
}
TINY_SD35_VAE: dict[str, Any] = {
    **SD35_VAE,
    "block_out_channels": (8, 8, 8, 8),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
}
TINY_TEXT: dict[str, Any] = {
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
}

DENOISERS: dict[Family, dict[str, Any]] = {
    "lcm": LCM_DREAMSHAPER_UNET,
    "ddpm": SD15_UNET,
    "flow": SD35_MEDIUM_TRANSFORMER,
}
TINY_DENOISERS: dict[Family, dict[str, Any]] = {
    "lcm": TINY_LCM_UNET,
    "ddpm": TINY_SD_UNET,
    "flow": TINY_SD35_TRANSFORMER,
}
MODEL_NAMES: dict[Family, str] = {
    "lcm": "LCM_Dreamshaper_v7 UNet (SD 1.5 + 256-dim w-embedding), random",
    "ddpm": "SD 1.5 UNet, random",
    "flow": "SD 3.5 Medium MMDiT, random",
}

# What the official code runs for the same settings: its sampling loop and step function (named, not carried), and
# the denoiser passes an image costs, to set beside genrl's (``passes_per_image``). Guidance by a doubled batch
# counts 2 passes a step; the w-embedding of an LCM 1.
OFFICIAL: dict[Family, dict[str, Any]] = {
    "lcm": {
        "code": "github.com/Owen-Oertell/rlcm",
        "sampling_loop": "lcm_rl_pytorch/diffusers_patch/pipeline.py (LatentConsistencyModelPipeline with log-probs)",
        "step_function": "lcm_rl_pytorch/diffusers_patch/lcm_scheduler.py: LCMScheduler.step, noised on every step",
        "steps": 8,
        "trained_steps": 8,
        "passes_per_step": 1,
        "reference_passes_per_trained_step": 0,
    },
    "ddpm": {
        "code": "github.com/kvablack/ddpo-pytorch",
        "sampling_loop": "ddpo_pytorch/diffusers_patch/pipeline_with_logprob.py: pipeline_with_logprob",
        "step_function": "ddpo_pytorch/diffusers_patch/ddim_with_logprob.py: ddim_step_with_logprob (eta 1)",
        "steps": 50,
        "trained_steps": 50,  # config/base.py train.timestep_fraction 1.0
        "passes_per_step": 2,  # guidance 5: unconditional and conditional halves of one batch
        "reference_passes_per_trained_step": 0,
    },
    "flow": {
        "code": "github.com/yifan123/flow_grpo",
        "sampling_loop": "flow_grpo/diffusers_patch/sd3_pipeline_with_logprob.py: pipeline_with_logprob",
        "step_function": "flow_grpo/diffusers_patch/sd3_sde_with_logprob.py: sde_step_with_logprob (noise level 0.7)",
        "steps": 10,
        "trained_steps": 9,  # train.timestep_fraction 0.99
        "passes_per_step": 2,  # guidance 4.5
        "reference_passes_per_trained_step": 2,  # the KL's prediction with the LoRA off (beta 0.04), guided too
    },
}
for _official in OFFICIAL.values():
    _official["sampling_passes_per_image"] = _official["steps"] * _official["passes_per_step"]
    _official["update_passes_per_image"] = {
        "forward_backward": _official["trained_steps"] * _official["passes_per_step"],
        "forward_only": _official["trained_steps"] * _official["reference_passes_per_trained_step"],
    }


@dataclass
class Args:
    output_dir: Path = Path("gpu-check")
    budget_s: float | None = None
    """Default 480 (60 with --dry-run). No part starts with less than its minimum left (``min_s``); each runs under a
    timeout of what is left."""
    dry_run: bool = False
    """The same parts on the CPU at tiny sizes: tiny configs, 2 steps, batches of 2, a 64-query suite."""
    device: str | None = None
    """Default: cuda, or cpu with --dry-run."""
    parts: tuple[Literal["tests", "epochs", "suite"], ...] = ("tests", "epochs", "suite")
    families: tuple[Family, ...] = FAMILIES
    precisions: tuple[Half, ...] = ("fp16", "bf16")
    epochs: int = 2
    """Epochs per case: the first is the warm-up; the rates are the last epoch's."""
    batches_per_epoch: int = 1
    """Sampling batches an epoch (the preset's batch each), trained as one optimizer step. 0: the preset's own
    (RLCM 1, DDPO 4, Flow-GRPO 8; their optimizer steps as the presets take them)."""
    small_text_encoders: bool = False
    """One-layer text encoders of the real widths instead of CLIP ViT-L, bigG and T5-XXL's sizes."""
    suite_flags: tuple[str, ...] | None = None
    """benchmarks.run's flags after --suite shapes --device D --output-dir DIR (default: --quick; dry run:
    ``dry_suite_flags``)."""
    case: tuple[str, ...] = ()
    """Internal: run these epoch cases, FAMILY:PRECISION, in this process and write cases/FAMILY-PRECISION.json."""


def resolved_device(args: Args) -> str:
    return args.device or ("cpu" if args.dry_run else "cuda")


# --------------------------------------------------------------------------------------------------
# Random-weight pipelines from the published configs
# --------------------------------------------------------------------------------------------------
def _clip_tokenizer():
    from genrl.shapes.tiny import _tokenizer

    tokenizer = _tokenizer()  # byte-level, no merges: CLIP's vocabulary is not carried
    tokenizer.model_max_length = CLIP_TOKENS
    return tokenizer


def _clip_text(tokenizer, config: dict[str, Any], projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(text_config)


def _small(config: dict[str, Any], dry: bool, width: int | None = None) -> dict[str, Any]:
    """A text encoder's config cut down: one layer at its own widths, or (``dry``) the tiny one."""
    if dry:
        return {**TINY_TEXT, "hidden_size": width, "projection_dim": width}
    return {**config, "num_hidden_layers": 1}


def build_pipeline(family: Family, dry: bool = False, small_text: bool = False, device: str = "cpu") -> Any:
    """The family's diffusers pipeline with random weights: the published denoiser, VAE and text encoders (or the
    tiny ones, ``dry``), built on ``device``, fp32."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        LatentConsistencyModelPipeline,
        PNDMScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    from genrl.shapes.components import SD_BETAS, build_t5_tokenizer, lcm_scheduler

    torch.manual_seed(0)
    net_config = (TINY_DENOISERS if dry else DENOISERS)[family]
    small = dry or small_text
    with torch.device(device):  # initialised where it runs: billions of random weights take minutes on a CPU
        if family == "flow":
            from transformers import T5Config, T5EncoderModel

            joint = net_config["joint_attention_dim"]
            pooled = net_config["pooled_projection_dim"]
            l_width, g_width = (pooled // 2, pooled // 2) if dry else (768, 1280)
            tokenizer, tokenizer_2 = _clip_tokenizer(), _clip_tokenizer()
            clip_l = _small(CLIP_L_TEXT, dry, l_width) if small else CLIP_L_TEXT
            clip_g = _small(CLIP_G_TEXT, dry, g_width) if small else CLIP_G_TEXT
            tokenizer_3 = build_t5_tokenizer()  # 512: the adapter takes diffusers' 256 T5 tokens
            t5 = {**T5_XXL, "d_model": joint, "num_layers": 1} if small else T5_XXL
            if dry:
                t5 = {**t5, "d_ff": 64, "d_kv": 8, "num_heads": 2}
            t5_config = T5Config(
                vocab_size=len(tokenizer_3),
                pad_token_id=tokenizer_3.pad_token_id,
                eos_token_id=tokenizer_3.eos_token_id,
                **t5,
            )
            return StableDiffusion3Pipeline(
                transformer=SD3Transformer2DModel(**net_config),
                scheduler=FlowMatchEulerDiscreteScheduler(shift=SD35_SHIFT),
                vae=AutoencoderKL(**(TINY_SD35_VAE if dry else SD35_VAE)),
                text_encoder=_clip_text(tokenizer, clip_l, projection=True),
                tokenizer=tokenizer,
                text_encoder_2=_clip_text(tokenizer_2, clip_g, projection=True),
                tokenizer_2=tokenizer_2,
                text_encoder_3=T5EncoderModel(t5_config),
                tokenizer_3=tokenizer_3,
            )
        tokenizer = _clip_tokenizer()
        clip = _small(CLIP_L_TEXT, dry, net_config["cross_attention_dim"]) if small else CLIP_L_TEXT
        parts = dict(
            vae=AutoencoderKL(**(TINY_VAE if dry else SD_VAE)),
            text_encoder=_clip_text(tokenizer, clip, projection=False),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**net_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        if family == "lcm":
            return LatentConsistencyModelPipeline(scheduler=lcm_scheduler(), **parts)
        # SD 1.5's scheduler_config.json: PNDM over SD's betas; genrl's DDIM sampler takes its config.
        scheduler = PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
        return StableDiffusionPipeline(scheduler=scheduler, **parts)


@contextlib.contextmanager
def built_in_memory(pipe: Any):
    """``genrl.assemble`` takes ``pipe`` in place of loading its configuration's model: what the load does after
    ``from_pretrained`` (``genrl.models.prepare_pipeline``) is done to it."""
    import genrl.assemble
    from genrl.models import prepare_pipeline

    def load(model: str, env: str, device: str = "cpu", dtype=torch.float32, sampler: str | None = None) -> Any:
        return prepare_pipeline(pipe, model, env, device, sampler)

    original = genrl.assemble.load_pipeline
    genrl.assemble.load_pipeline = load
    try:
        yield
    finally:
        genrl.assemble.load_pipeline = original


# --------------------------------------------------------------------------------------------------
# One epoch case
# --------------------------------------------------------------------------------------------------
def case_config(family: Family, precision: str, device: str, dry: bool, epochs: int, batches_per_epoch: int):
    """The family's paper preset on ``device`` in ``precision``, ``batches_per_epoch`` sampling batches an epoch
    trained as one optimizer step (0: the preset's own batches and steps), no evaluation; at tiny sizes (``dry``):
    64 px, 2 steps, batches of 2."""
    from genrl.config import replace_config, setting
    from genrl.presets import preset

    cfg = preset(PRESET_OF_FAMILY[family])
    changes: dict[str, Any] = dict(
        model=f"random weights: {MODEL_NAMES[family]}", device=device, mixed_precision=precision, epochs=epochs
    )
    changes.update(eval_every=0, log_images_every=10**6, save_every=10**6)
    if dry:
        changes.update(num_steps=2, resolution=64, sample_batch_size=2, train_batch_size=2, stat_min_count=2)
        if cfg.group_size > 1:
            changes["group_size"] = 2
    cfg = replace_config(cfg, **changes)
    if batches_per_epoch > 0:
        samples = cfg.sample_batch_size * batches_per_epoch
        cfg = replace_config(
            cfg,
            batches_per_epoch=batches_per_epoch,
            gradient_accumulation_steps=max(1, samples // setting(cfg, "train_batch_size")),
        )
    return cfg


def passes_per_image(cfg: Any, family: Family) -> dict[str, Any]:
    """Denoiser passes an image costs in this configuration: sampling, and the update's forward+backward and
    forward-only (the KL's reference) passes."""
    from genrl.algos.common import trained_steps
    from genrl.config import setting

    per_step = 1 if family == "lcm" or cfg.guidance_scale <= 1 else 2
    trained = trained_steps(cfg.num_steps, setting(cfg, "timestep_fraction"))
    if family == "lcm" and not cfg.noise_last_step:
        trained = min(trained, cfg.num_steps - 1)
    reference = per_step if setting(cfg, "kl_coef") > 0 else 0
    return {
        "steps": cfg.num_steps,
        "trained_steps": trained,
        "sampling_passes_per_image": cfg.num_steps * per_step,
        "update_passes_per_image": {"forward_backward": trained * per_step, "forward_only": trained * reference},
    }


def _memory_mib(cuda: bool) -> dict[str, float]:
    if cuda:
        return {
            "allocated_mib": torch.cuda.memory_allocated() / 2**20,
            "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
        }
    return {"process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def epoch_case(
    family: Family,
    precision: str,
    device: str,
    dry: bool = False,
    epochs: int = 2,
    batches_per_epoch: int = 1,
    small_text: bool = False,
) -> dict[str, Any]:
    """Build the family's random-weight pipeline at the published sizes (tiny, ``dry``), then ``genrl.train.build``
    and ``epochs`` calls of ``genrl.train.run_epoch`` on it: each epoch's sampling and update images per second, and
    the peak memory over the epochs."""
    import genrl.train

    cuda = torch.device(device).type == "cuda"
    cfg = case_config(family, precision, device, dry, epochs, batches_per_epoch)
    start = time.perf_counter()
    pipe = build_pipeline(family, dry, small_text, device)
    with built_in_memory(pipe):
        t = genrl.train.build(cfg)
    _sync(cuda)
    net = t.policy.adapter.denoiser
    images = cfg.sample_batch_size * cfg.batches_per_epoch
    result: dict[str, Any] = {
        "family": family,
        "precision": precision,
        "preset": PRESET_OF_FAMILY[family],
        "model": MODEL_NAMES[family] if not dry else f"tiny {family} (dry run)",
        "device": device,
        "resolution": cfg.resolution,
        "images_per_epoch": images,
        "sample_batch_size": cfg.sample_batch_size,
        "batches_per_epoch": cfg.batches_per_epoch,
        "optimizer_steps_per_epoch": images
        // (cfg.algo_config.train_batch_size * cfg.algo_config.gradient_accumulation_steps),
        "guidance_scale": cfg.guidance_scale,
        "lora_rank": cfg.lora_rank,
        "denoiser_params_m": sum(p.numel() for p in net.parameters() if not p.requires_grad) / 1e6,
        "lora_params_m": sum(p.numel() for p in t.policy.trainable_parameters()) / 1e6,
        "pipeline_params_m": {
            name: sum(p.numel() for p in part.parameters()) / 1e6
            for name, part in vars(t.pipe).items()
            if isinstance(part, torch.nn.Module)
        },
        "text_encoders": "tiny" if dry else ("one layer" if small_text else "published sizes"),
        **passes_per_image(cfg, family),
        "official": OFFICIAL[family],
        "build_s": time.perf_counter() - start,
        "after_build": _memory_mib(cuda),
    }
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for epoch in range(1, epochs + 1):
        _sync(cuda)
        began = time.perf_counter()
        _, metrics = genrl.train.run_epoch(t, epoch)
        _sync(cuda)
        wall = time.perf_counter() - began
        sample, train = metrics["sample_time_s"], metrics["train_time_s"]
        rows.append(
            {
                "epoch": epoch,
                "wall_s": wall,
                "sample_s": sample,
                "reward_s": metrics["reward_time_s"],
                "update_s": train,
                "sampling_images_per_s": images / sample,
                "update_images_per_s": images / train,
                "reward_mean": metrics["reward_mean"],
                "loss": metrics.get("loss"),
                "steps_skipped": metrics.get("steps_skipped"),
            }
        )
    result["epochs"] = rows
    result["memory"] = _memory_mib(cuda)
    result["memory_kind"] = "cuda max_memory_allocated over the epochs" if cuda else "process peak RSS"
    result["peak_mib"] = result["memory"]["peak_allocated_mib" if cuda else "process_peak_rss_mib"]
    last = rows[-1]
    result["sampling_images_per_s"] = last["sampling_images_per_s"]
    result["update_images_per_s"] = last["update_images_per_s"]
    result["case_s"] = time.perf_counter() - start
    del t, pipe, net
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def run_cases(args: Args) -> None:
    """``--case``: each case in this process, its result (or its error) to cases/FAMILY-PRECISION.json."""
    folder = args.output_dir / "cases"
    folder.mkdir(parents=True, exist_ok=True)
    for case in args.case:
        family, precision = case.split(":")
        print(f"[gpu_check] epoch case {case}", file=sys.stderr, flush=True)
        try:
            result = epoch_case(
                family,  # type: ignore[arg-type]
                precision,
                resolved_device(args),
                args.dry_run,
                args.epochs,
                args.batches_per_epoch,
                args.small_text_encoders,
            )
        except Exception as exc:  # one case's failure (out of memory, a bug) is its result
            result = {"family": family, "precision": precision, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        (folder / f"{family}-{precision}.json").write_text(json.dumps(result, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# The parts, under the budget
# --------------------------------------------------------------------------------------------------
RESERVE_S = 5.0
"""Kept back from every part's timeout, for writing the results."""


@dataclass
class Part:
    name: str
    argv: list[str]
    min_s: float
    """Not started with less than this left."""
    env: dict[str, str] = dataclasses.field(default_factory=dict)


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.began = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.began)

    def used(self) -> float:
        return time.perf_counter() - self.began


def run_part(part: Part, budget: Budget, logs: Path) -> dict[str, Any]:
    """``part`` in its own process group, under a timeout of the budget left; its output to logs/NAME.log."""
    left = budget.left()
    if left < part.min_s:
        return {
            "status": "skipped",
            "why": f"{left:.0f} s of the budget left, the part needs at least {part.min_s:.0f}",
        }
    timeout = max(1.0, left - RESERVE_S)
    log = logs / f"{part.name.replace(' ', '-').replace(':', '-')}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **part.env}
    began = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            part.argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own group: pytest's or the suite's children too
            process.wait()
            seconds = time.perf_counter() - began
            return {"status": "timed out", "why": f"stopped after {seconds:.0f} s (the budget's end)", "s": seconds}
    seconds = time.perf_counter() - began
    result: dict[str, Any] = {"status": "ok" if code == 0 else "failed", "exit_code": code, "s": seconds}
    result["log"] = str(log.relative_to(logs.parent))
    if code != 0:
        result["log_tail"] = log.read_text(errors="replace")[-1500:]
    return result


def cuda_test_files() -> list[str]:
    """The test files that mention CUDA."""
    return [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "tests").rglob("test_*.py"))
        if "cuda" in path.read_text(errors="replace")
    ]


def read_junit(path: Path) -> dict[str, Any]:
    """Counts and failures from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                message = (child.get("message") or child.text or "").strip().splitlines()
                failed.append(f"{case.get('classname')}::{case.get('name')}: {message[0][:300] if message else ''}")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"passed": passed, **counts, "failed_tests": failed}


def part_env(args: Args) -> dict[str, str]:
    """A dry run computes on one thread a process (the machine it runs on is often shared), unless told otherwise."""
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")} if args.dry_run else {}


def tests_part(args: Args, out: Path) -> tuple[Part, list[str]]:
    files = cuda_test_files()
    argv = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-k", "cuda", *files]
    argv += ["--junitxml", str(out / "tests.xml")]
    return Part("tests", argv, 5 if args.dry_run else 30, part_env(args)), files


def epoch_parts(args: Args, out: Path) -> list[Part]:
    """One process per case on a GPU (peaks and allocator state do not mix); one for all of them in a dry run (the
    process start-up is most of a tiny case)."""
    cases = [f"{family}:{precision}" for family in args.families for precision in args.precisions]
    base = [sys.executable, "-m", "benchmarks.gpu_check", "--output-dir", str(out), "--device", resolved_device(args)]
    base += ["--epochs", str(args.epochs), "--batches-per-epoch", str(args.batches_per_epoch)]
    base += ["--dry-run"] if args.dry_run else []
    base += ["--small-text-encoders"] if args.small_text_encoders else []
    if args.dry_run:
        return [Part("epochs " + " ".join(cases), [*base, "--case", *cases], 5, part_env(args))]
    minimum = {"lcm": 30, "ddpm": 60, "flow": 75}
    return [Part(f"epochs {case}", [*base, "--case", case], min_s=minimum[case.split(":")[0]]) for case in cases]


def dry_suite_flags() -> list[str]:
    """The dry run's suite: the quick suite cut to the compression task, 64 reward queries (RLCM's 2 epochs, DDPO's 1)
    and 2 evaluation images. It still takes minutes on a CPU (6 min on a loaded 2-core one, its final evaluation most
    of it), so the dry run's 60 s budget stops it: the stop is what a dry run exercises there."""
    return ["--quick", "--tasks", "compression", "--queries", "64", "--eval-queries", "64", "--eval-images", "2"]


def suite_part(args: Args, out: Path) -> Part:
    flags = dry_suite_flags() if args.dry_run else ["--quick"]
    flags = list(args.suite_flags) if args.suite_flags is not None else flags
    argv = [sys.executable, "-m", "benchmarks.run", "--suite", "shapes", "--device", resolved_device(args)]
    argv += ["--output-dir", str(out / "suite"), *flags]
    return Part("suite", argv, 10 if args.dry_run else 120, part_env(args))


SUITE_RATIOS = (
    "fidelity_speedup",
    "fidelity_query_ratio",
    "cost_per_query_ratio",
    "train_speedup",
    "query_efficiency",
    "inference_speedup",
    "inference_speedup_50_ddim",
)


def read_suite(folder: Path) -> dict[str, Any]:
    """The suite's ratios per task from its results.json (what it had written, if it was stopped)."""
    path = folder / "results.json"
    if not path.is_file():
        return {}
    from benchmarks.report import format_headline

    results = json.loads(path.read_text())
    tasks = {}
    for task, data in results.get("tasks", {}).items():
        summary = data.get("summary", {})
        tasks[task] = {key: summary.get(key) for key in SUITE_RATIOS if key in summary}
        try:
            tasks[task]["headline"] = format_headline(summary)
        except (KeyError, TypeError) as exc:  # a summary without the pair (a cut-down suite of one method)
            tasks[task]["headline"] = f"no headline ({type(exc).__name__}: {exc})"
    return {"tasks": tasks, "meta": results.get("meta", {})}


def _git_commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or None


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def budget_seconds(args: Args) -> float:
    return args.budget_s if args.budget_s is not None else (60.0 if args.dry_run else 480.0)


def check(args: Args) -> dict[str, Any]:
    """Every part under the budget; the results as written to gpu_check.json."""
    out = args.output_dir
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    device = resolved_device(args)
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; pass --dry-run to run the check's code path on the CPU")
    budget = Budget(budget_seconds(args))
    results: dict[str, Any] = {
        "meta": {
            "command": " ".join(["python -m benchmarks.gpu_check", *sys.argv[1:]]),
            "dry_run": args.dry_run,
            "device": device,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "commit": _git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "budget_s": budget.seconds,
            "settings": {
                "parts": list(args.parts),
                "families": list(args.families),
                "precisions": list(args.precisions),
                "epochs": args.epochs,
                "batches_per_epoch": args.batches_per_epoch,
                "small_text_encoders": args.small_text_encoders,
            },
        },
        "parts": {},
        "skipped": [],
    }

    def record(part: Part, outcome: dict[str, Any]) -> dict[str, Any]:
        results["parts"][part.name] = outcome
        if outcome["status"] in ("skipped", "timed out"):
            results["skipped"].append(f"{part.name}: {outcome['status']} ({outcome['why']})")
        print(f"[gpu_check] {part.name}: {outcome['status']} ({budget.used():.0f} s used)", file=sys.stderr)
        return outcome

    if "tests" in args.parts:
        part, files = tests_part(args, out)
        outcome = record(part, run_part(part, budget, logs))
        outcome["files"], outcome["selection"] = files, "-k cuda"
        if (out / "tests.xml").is_file():
            outcome.update(read_junit(out / "tests.xml"))
    cases = []
    if "epochs" in args.parts:
        for part in epoch_parts(args, out):
            outcome = record(part, run_part(part, budget, logs))
            for case in part.argv[part.argv.index("--case") + 1 :]:
                family, precision = case.split(":")
                path = out / "cases" / f"{family}-{precision}.json"
                if path.is_file():
                    cases.append(json.loads(path.read_text()))
                else:
                    why = outcome.get("why") or f"exit {outcome.get('exit_code')}, see {outcome.get('log')}"
                    cases.append({"family": family, "precision": precision, "error": f"{outcome['status']}: {why}"})
    results["epochs"] = cases
    if "suite" in args.parts:
        part = suite_part(args, out)
        outcome = run_part(part, budget, logs)
        if outcome["status"] == "timed out":  # the tasks it finished are in its results.json
            outcome["why"] += "; the same command with --parts suite continues it"
        record(part, outcome)["argv"] = part.argv[1:]
        results["suite"] = read_suite(out / "suite")
    results["meta"]["device_name"] = _device_name(device)  # after the parts: no CUDA context held while they run
    results["meta"]["total_s"] = budget.used()
    return results


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------
def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def table(results: dict[str, Any]) -> str:
    meta = results["meta"]
    kind = "dry run: CPU, tiny configs" if meta["dry_run"] else "published sizes, random weights"
    lines = [
        f"# GPU check ({kind})",
        "",
        f"{meta['device_name']} ({meta['device']}), torch {meta['torch']}, CUDA {meta['cuda']}, commit "
        f"{(meta['commit'] or '?')[:10]}, {meta['date']}; {meta['total_s']:.0f} s of a {meta['budget_s']:.0f} s "
        "budget.",
        "",
        "| part | status | s | result |",
        "|---|---|---:|---|",
    ]
    for name, part in results["parts"].items():
        if name == "tests" and "tests" in part:
            what = f"{part['passed']} passed, {part['failures'] + part['errors']} failed, {part['skipped']} skipped"
            what += f" ({len(part['files'])} files, -k cuda)"
        elif part["status"] in ("skipped", "timed out"):
            what = part["why"]
        else:
            what = "" if part["status"] == "ok" else f"exit {part.get('exit_code')}: see {part.get('log')}"
        lines.append(f"| {name} | {part['status']} | {_num(part.get('s'), 3)} | {what} |")
    failed = results["parts"].get("tests", {}).get("failed_tests", [])
    lines += [f"- failed: {test}" for test in failed]
    if results.get("epochs"):
        lines += [
            "",
            "One PPO epoch (the last of each case; the first is the warm-up), random weights:",
            "",
            "| family | denoiser | precision | images | sampling img/s | update img/s | peak MiB | passes/image "
            "sampling, update fwd+bwd (+fwd) | official's |",
            "|---|---|---|---:|---:|---:|---:|---|---|",
        ]
        for case in results["epochs"]:
            if "error" in case:
                lines.append(f"| {case['family']} | - | {case['precision']} | not measured: {case['error'][:200]} |")
                continue
            ours, official = case["update_passes_per_image"], case["official"]["update_passes_per_image"]
            lines.append(
                f"| {case['family']} ({case['preset']}) | {case['model']} | {case['precision']} | "
                f"{case['images_per_epoch']} | {_num(case['sampling_images_per_s'])} | "
                f"{_num(case['update_images_per_s'])} | {case['peak_mib']:.0f} | "
                f"{case['sampling_passes_per_image']}, {ours['forward_backward']} (+{ours['forward_only']}) | "
                f"{case['official']['sampling_passes_per_image']}, {official['forward_backward']} "
                f"(+{official['forward_only']}) |"
            )
    suite = results.get("suite")
    if suite is not None:
        lines += ["", "Shapes quick suite on this device (ratios: DDPO's over RLCM's, as benchmarks.run reports):", ""]
        if not suite.get("tasks"):
            lines.append("no results.json was written")
        for task, ratios in suite.get("tasks", {}).items():
            shown = ", ".join(f"{key} {_num(ratios[key])}" for key in SUITE_RATIOS if ratios.get(key) is not None)
            lines.append(f"- {task}: {shown or 'no ratios'}")
            lines += [f"  {line}" for line in ratios["headline"].splitlines()]
    if results["skipped"]:
        lines += ["", "Skipped or stopped:", ""] + [f"- {item}" for item in results["skipped"]]
    return "\n".join(lines) + "\n"


def main(args: Args) -> None:
    if args.case:
        run_cases(args)
        return
    results = check(args)
    out = args.output_dir
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (out / "gpu_check.md").write_text(text)
    print(text)
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))

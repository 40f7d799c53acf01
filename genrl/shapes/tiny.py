"""Tiny random-weight Stable Diffusion and LCM pipelines, built from configs and saved as diffusers folders.

``--model tiny``: plumbing checks in seconds. The tests and the ``tiny-*`` presets load them through the same
``from_pretrained`` path a real checkpoint takes. Same seed, same weights. They borrow the shapes models' text
encoder, noise schedule and LCM scheduler (``genrl.shapes.components``), nothing trained.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    LatentConsistencyModelPipeline,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTokenizer

from genrl.shapes.components import SD_BETAS, build_text_encoder, lcm_scheduler

RESOLUTION = 64


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255 (GPT-2's mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def _tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: every character is a token."""
    chars = _byte_alphabet()
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)


def _components(lcm: bool) -> dict:
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    text_encoder = build_text_encoder(tokenizer, width=32, layers=2, mlp_ratio=2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=RESOLUTION,
    )
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
        time_cond_proj_dim=32 if lcm else None,
    )
    if lcm:
        scheduler = lcm_scheduler()
    else:
        scheduler = PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def save_tiny_pipeline(folder: str | Path, lcm: bool) -> Path:
    """Build a tiny pipeline (LCM if ``lcm`` else Stable Diffusion) and save it to ``folder`` atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        parts = _components(lcm)
        cls = LatentConsistencyModelPipeline if lcm else StableDiffusionPipeline
        pipe = cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        staged = Path(tmp) / "pipeline"
        pipe.save_pretrained(staged, safe_serialization=True)
        try:
            os.replace(staged, folder)
        except OSError:
            if not (folder / "model_index.json").exists():  # a folder left incomplete by something else
                shutil.rmtree(folder)
                os.replace(staged, folder)
            # else another process built it first: both builds are the same
    return folder


def tiny_pipeline_dir(lcm: bool) -> Path:
    """The cached tiny pipeline folder, built on first use."""
    root = Path(os.environ.get("GENRL_CACHE", Path.home() / ".cache" / "genrl"))
    folder = root / ("tiny-lcm" if lcm else "tiny-sd")
    if not (folder / "model_index.json").exists():  # never delete here: another process may be loading it
        save_tiny_pipeline(folder, lcm)
    return folder

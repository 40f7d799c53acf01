"""Tiny random-weight Stable Diffusion, LCM, Stable Diffusion 3, SDXL and FLUX pipelines, built from configs and
saved as diffusers folders.

``--model tiny``: plumbing checks in seconds. The tests and the ``tiny-*`` presets load them through the same
``from_pretrained`` path a real checkpoint takes. Same seed, same weights. They borrow the shapes models' text
encoder, noise schedule and LCM scheduler (``genrl.shapes.components``), nothing trained. ``--model tiny`` loads
the one each family samples (``genrl.families``: ``tiny-lcm``, ``tiny-sd``, ``tiny-sd3``); every one loads by its
name too (``--model tiny-sdxl --env ddpm``, ``--model tiny-flux --env flow``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    LatentConsistencyModelPipeline,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from genrl.shapes.components import (
    SD_BETAS,
    build_t5,
    build_t5_tokenizer,
    build_text_encoder,
    clip_text_config,
    lcm_scheduler,
)

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


def _tiny_vae(latent_channels: int, **extra: float) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=16,
        sample_size=RESOLUTION,
        **extra,
    )


def _components(lcm: bool) -> dict:
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    text_encoder = build_text_encoder(tokenizer, width=32, layers=2, mlp_ratio=2)
    vae = _tiny_vae(latent_channels=4)
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        # Attention on the 8x8 level only: on the 16x16 one it took a third of the test suite's time.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
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


def _sd3_components() -> dict:
    """Stable Diffusion 3's parts at toy size: two CLIP text encoders with projections (their pooled outputs,
    concatenated, are the transformer's ``pooled_projections``), a T5 encoder, a 16-channel VAE with SD3's scaling
    and shift factors, an MMDiT of two joint blocks, and SD3's shifted flow-matching scheduler. Every part is there,
    so that ``StableDiffusion3Pipeline.from_pretrained(folder)`` loads it with no arguments."""
    torch.manual_seed(0)
    width = 32
    tokenizer = _tokenizer()

    def clip() -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(clip_text_config(tokenizer, width=width, layers=2, mlp_ratio=2))

    text_encoder, text_encoder_2 = clip(), clip()
    tokenizer_3 = build_t5_tokenizer()
    # T5's width is the transformer's joint_attention_dim; the CLIP states (2 x 32 wide) are zero-padded to it.
    text_encoder_3 = build_t5(tokenizer_3, 2 * width, feed_forward=2 * width, heads=4)
    vae = _tiny_vae(
        latent_channels=16,
        scaling_factor=1.5305,  # SD3's
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 4,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=2 * width,  # T5's width
        caption_projection_dim=16,  # the blocks' width, heads x head dim
        pooled_projection_dim=2 * width,
        pos_embed_max_size=RESOLUTION // 4 // 2,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's
    return dict(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def _sdxl_components() -> dict:
    """SDXL's parts at toy size: a CLIP text encoder and a second one with a projection, of different widths (the
    UNet attends to their penultimate states side by side; the second one's projected output is the pooled prompt),
    a UNet with SDXL's "text_time" added conditioning (the pooled prompt and the six size and crop numbers, each
    embedded in ``time_dim`` sinusoids), SDXL's Euler scheduler over SD's betas, and a VAE with SDXL's scaling."""
    torch.manual_seed(0)
    width, width_2, time_dim = 32, 48, 8
    tokenizer, tokenizer_2 = _tokenizer(), _tokenizer()  # one length: the two encoders' states are concatenated
    text_encoder = build_text_encoder(tokenizer, width=width, layers=2, mlp_ratio=2)
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizer_2, width=width_2, layers=2, mlp_ratio=2))
    vae = _tiny_vae(latent_channels=4, scaling_factor=0.13025)  # SDXL's
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width + width_2,
        attention_head_dim=8,
        norm_num_groups=16,
        use_linear_projection=True,  # SDXL's
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # The pooled prompt (text_encoder_2's projection) beside original size, crop corner and target size.
        projection_class_embeddings_input_dim=text_encoder_2.config.projection_dim + 6 * time_dim,
    )
    # SDXL base's scheduler configuration.
    scheduler = EulerDiscreteScheduler(**SD_BETAS, steps_offset=1, timestep_spacing="leading")
    return dict(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )


FLUX_T5_TOKENS = 32
"""The tiny FLUX's T5 tokenizer length: pass it as ``max_sequence_length`` (FluxPipeline's default, 512, works too,
with 16 times the text tokens)."""


def _flux_components() -> dict:
    """FLUX.1's parts at toy size: a CLIP text encoder (its pooled output is the transformer's
    ``pooled_projections``), a T5 encoder (its states are the text tokens), a 16-channel VAE with FLUX's scaling and
    shift factors, whose latents the pipeline packs into 2 x 2 patches (64 channels), a guidance-distilled
    transformer of one double-stream and one single-stream block, and FLUX's resolution-shifted flow-matching
    scheduler."""
    torch.manual_seed(0)
    width = 32
    tokenizer = _tokenizer()
    text_encoder = build_text_encoder(tokenizer, width=width, layers=2, mlp_ratio=2)
    tokenizer_2 = build_t5_tokenizer(max_length=FLUX_T5_TOKENS)
    text_encoder_2 = build_t5(tokenizer_2, 2 * width, feed_forward=2 * width, heads=4)
    latent_channels = 16
    vae = _tiny_vae(
        latent_channels=latent_channels,
        scaling_factor=0.3611,  # FLUX.1's
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    head_dim = 16
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # 2 x 2 latent patches, packed by the pipeline
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=head_dim,
        num_attention_heads=2,
        joint_attention_dim=text_encoder_2.config.d_model,
        pooled_projection_dim=text_encoder.config.hidden_size,
        guidance_embeds=True,  # FLUX.1 [dev]'s
        axes_dims_rope=(4, 6, 6),  # rotary dims of the ids (0 here, row, column): head_dim in all
    )
    # FLUX.1's scheduler configuration: the shift grows with the number of image tokens.
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return dict(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def _build(name: str):
    """The pipeline ``name`` of ``TINY_MODELS``, built."""
    if name == "tiny-sd3":
        return StableDiffusion3Pipeline(**_sd3_components())
    if name == "tiny-sdxl":
        return StableDiffusionXLPipeline(**_sdxl_components(), add_watermarker=False)
    if name == "tiny-flux":
        return FluxPipeline(**_flux_components())
    lcm = name == "tiny-lcm"
    cls = LatentConsistencyModelPipeline if lcm else StableDiffusionPipeline
    return cls(**_components(lcm), safety_checker=None, feature_extractor=None, requires_safety_checker=False)


TINY_MODELS = ("tiny-lcm", "tiny-sd", "tiny-sd3", "tiny-sdxl", "tiny-flux")
"""The tiny pipelines by name: the LCM, the Stable Diffusion it would come from, a Stable Diffusion 3, an SDXL and a
FLUX.1 [dev]."""
BUILD = 2
"""Raised whenever ``_build`` builds something else: the cached folders of an older build are not loaded."""


def save_tiny_model(folder: str | Path, name: str) -> Path:
    """Build the tiny pipeline ``name`` (one of ``TINY_MODELS``) and save it to ``folder`` atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        pipe = _build(name)
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


def save_tiny_pipeline(folder: str | Path, lcm: bool) -> Path:
    """Build a tiny pipeline (LCM if ``lcm`` else Stable Diffusion) and save it to ``folder`` atomically."""
    return save_tiny_model(folder, "tiny-lcm" if lcm else "tiny-sd")


def tiny_model_dir(name: str) -> Path:
    """The cached folder of the tiny pipeline ``name`` (one of ``TINY_MODELS``), built on first use."""
    if name not in TINY_MODELS:
        raise ValueError(f"no tiny pipeline {name!r}; the tiny pipelines are {', '.join(TINY_MODELS)}")
    root = Path(os.environ.get("GENRL_CACHE", Path.home() / ".cache" / "genrl"))
    folder = root / f"{name}-build{BUILD}"
    if not (folder / "model_index.json").exists():  # never delete here: another process may be loading it
        save_tiny_model(folder, name)
    return folder


def tiny_pipeline_dir(lcm: bool) -> Path:
    """The cached tiny LCM (``lcm``) or Stable Diffusion folder, built on first use."""
    return tiny_model_dir("tiny-lcm" if lcm else "tiny-sd")

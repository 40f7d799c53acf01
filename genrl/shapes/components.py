"""The shapes world's models, each a standard diffusers or transformers component, built from configs.

Sizes are set by two bars: sampling 8 images with the LCM in 4 steps, decode included, takes at most 0.25 s
on a 2-core CPU, and all shipped weights fit in 25 MB. Latents are 4 x 16 x 16 (the VAE downsamples by 4);
the UNet attends to the prompt only at 8 x 8 and 4 x 4, where attention is cheap.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ConfigMixin, DDIMScheduler, LCMScheduler, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from genrl.shapes.world import ATTRIBUTES, BACKGROUNDS, COLOURS, COUNTS, RESOLUTION, SHAPES, SIZES

MAX_TOKENS = 16
TEXT_DIM = 64
GUIDANCE_EMBED_DIM = 64
# Stable Diffusion's beta schedule, which Dreamshaper 7 and LCM_Dreamshaper_v7 share.
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def build_tokenizer(max_length: int = MAX_TOKENS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the world's vocabulary, CLIP's special tokens and padding (other words: unk)."""
    words = sorted({*COUNTS, *SIZES, *COLOURS, *SHAPES, *(s + "s" for s in SHAPES), *BACKGROUNDS, "on", "background"})
    bos, eos, unk = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
    vocab = {bos: 0, eos: 1, unk: 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(WordLevel(vocab, unk_token=unk))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        unk_token=unk,
        model_max_length=max_length,
    )


def build_text_encoder(
    tokenizer: PreTrainedTokenizerBase, width: int = TEXT_DIM, layers: int = 3, mlp_ratio: int = 4
) -> CLIPTextModel:
    """A small CLIP text encoder whose vocabulary, positions and special tokens match ``tokenizer``."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=mlp_ratio * width,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=width,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=RESOLUTION,
    )


def build_unet(lcm: bool) -> UNet2DConditionModel:
    """The teacher (``lcm=False``), or the LCM student: the same network plus the guidance (w) embedding."""
    return UNet2DConditionModel(
        sample_size=RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
        time_cond_proj_dim=GUIDANCE_EMBED_DIM if lcm else None,
    )


def teacher_scheduler() -> DDIMScheduler:
    """Stable Diffusion's training schedule, with DDIM for sampling (as DDPO samples)."""
    return DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


LCM_ORIGIN_STEPS = 50
"""Steps of the skipping grid that LCM distillation and sampling use (LCM_Dreamshaper_v7's original_inference_steps)."""


def lcm_scheduler() -> LCMScheduler:
    """LCM_Dreamshaper_v7's scheduler configuration."""
    return LCMScheduler(
        **SD_BETAS,
        original_inference_steps=LCM_ORIGIN_STEPS,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,
        timestep_scaling=10.0,
        prediction_type="epsilon",
    )


class ShapesClassifier(ModelMixin, ConfigMixin):
    """Predicts each attribute of a shapes-world image: a small CNN with one linear head per attribute.

    Input: images (B, 3, 64, 64) in [0, 1]. Output: {attribute: logits (B, number of values)}.
    """

    @register_to_config
    def __init__(self, channels: tuple[int, ...] = (32, 64, 96, 128), attributes: dict | None = None):
        super().__init__()
        attributes = attributes or {name: len(values) for name, values in ATTRIBUTES.items()}
        layers, c_in = [], 3
        for c in channels:
            layers += [
                torch.nn.Conv2d(c_in, c, 3, padding=1),
                torch.nn.GroupNorm(8, c),
                torch.nn.SiLU(),
                torch.nn.Conv2d(c, c, 3, padding=1, stride=2),
                torch.nn.SiLU(),
            ]
            c_in = c
        self.features = torch.nn.Sequential(*layers)
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(c_in * 2, n) for name, n in attributes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images * 2 - 1)
        # Mean pooling counts area (how many shapes, how large), max pooling finds small ones.
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return {name: head(pooled) for name, head in self.heads.items()}

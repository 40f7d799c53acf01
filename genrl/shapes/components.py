"""The shapes world's models, each a standard diffusers or transformers component, built from configs.

Sizes are set by two bars: sampling 8 images with the LCM in 4 steps, decode included, takes at most 0.25 s
on a 2-core CPU, and all shipped weights fit in 45 MB (25 MB without the flow model). Latents are 4 x 16 x 16 (the
VAE downsamples by 4); the UNet attends to the prompt only at 8 x 8 and 4 x 4, where attention is cheap.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    ConfigMixin,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
    ModelMixin,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import register_to_config
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

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


def clip_text_config(
    tokenizer: PreTrainedTokenizerBase, width: int = TEXT_DIM, layers: int = 3, mlp_ratio: int = 4
) -> CLIPTextConfig:
    """A small CLIP text encoder's config whose vocabulary, positions and special tokens match ``tokenizer``."""
    return CLIPTextConfig(
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


def build_text_encoder(
    tokenizer: PreTrainedTokenizerBase, width: int = TEXT_DIM, layers: int = 3, mlp_ratio: int = 4
) -> CLIPTextModel:
    """A small CLIP text encoder for ``tokenizer`` (``clip_text_config``)."""
    return CLIPTextModel(clip_text_config(tokenizer, width, layers, mlp_ratio))


def with_projection(text_encoder: CLIPTextModel) -> CLIPTextModelWithProjection:
    """``text_encoder`` as the CLIPTextModelWithProjection that Stable Diffusion 3 takes, with an identity
    projection: SD3's pooled prompt embedding is then the encoder's final state at the end-of-text token."""
    projected = CLIPTextModelWithProjection(text_encoder.config)
    # transformers 5's CLIPTextModel is the text transformer itself; earlier ones hold it as .text_model.
    projected.text_model.load_state_dict(getattr(text_encoder, "text_model", text_encoder).state_dict())
    with torch.no_grad():
        projected.text_projection.weight.copy_(torch.eye(text_encoder.config.hidden_size))
    return projected


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


FLOW_WIDTH = 128
"""The flow transformer's width (heads x head dim)."""


def build_flow_transformer() -> SD3Transformer2DModel:
    """An MMDiT (SD3's joint-attention transformer) on the 4 x 16 x 16 latents in 2 x 2 patches: 64 image tokens beside
    the prompt's 16 CLIP tokens and its zero T5 tokens (``FLOW_ZERO_TOKENS``)."""
    return SD3Transformer2DModel(
        sample_size=RESOLUTION // 4,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=6,
        attention_head_dim=32,
        num_attention_heads=FLOW_WIDTH // 32,
        joint_attention_dim=2 * TEXT_DIM,  # SD3 puts its two CLIP encoders' states side by side
        caption_projection_dim=FLOW_WIDTH,
        pooled_projection_dim=2 * TEXT_DIM,
        pos_embed_max_size=RESOLUTION // 4 // 2,
        qk_norm="rms_norm",  # SD3.5's
    )


def build_t5_tokenizer(max_length: int = 512) -> T5TokenizerFast:
    """A unigram T5 tokenizer over the printable ASCII characters (each also with the word-start mark), no merges."""
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]  # T5's ids 0-2, then the space
    vocab = specials + [(c, -1.0) for c in chars] + [("\u2581" + c, -1.5) for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


FLOW_ZERO_TOKENS = (1, 256)
"""The shapes flow model takes no text from T5: after the prompt's CLIP tokens it sees T5 tokens that are all zero,
as SD3 does when T5 is dropped. It was trained to read 1 of them (what genrl samples it with, the T5 tokenizer's
``model_max_length``) and 256 (diffusers' default ``max_sequence_length``) alike."""


def build_t5(tokenizer: T5TokenizerFast, width: int, feed_forward: int, heads: int) -> T5EncoderModel:
    """A one-layer T5 encoder ``width`` wide, whose vocabulary and special tokens match ``tokenizer``."""
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=width,
            d_kv=8,
            d_ff=feed_forward,
            num_layers=1,
            num_heads=heads,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )


def build_zero_t5(tokenizer: T5TokenizerFast, width: int) -> T5EncoderModel:
    """A one-layer T5 encoder whose final norm has weight 0, so that it returns zeros for any prompt: the shapes flow
    model's text_encoder_3, there so that ``StableDiffusion3Pipeline.from_pretrained`` loads the folder with no
    arguments (``FLOW_ZERO_TOKENS``)."""
    t5 = build_t5(tokenizer, width, feed_forward=16, heads=1)
    with torch.no_grad():
        t5.encoder.final_layer_norm.weight.zero_()
    return t5.requires_grad_(False)


def flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Euler on the rectified-flow ODE with no shift: SD3 shifts its schedule towards noise for images larger than
    256 x 256 (by sqrt(pixels / 256^2)); at 64 x 64 that rule asks for no shift or less."""
    return FlowMatchEulerDiscreteScheduler(shift=1.0)


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

"""ImageReward (Xu et al., 2023): a BLIP reward model trained on human rankings of text-to-image outputs.

The score is the ImageReward package's: BLIP's ViT-L/16 encodes the image (224 px: the short side resized,
bicubic, centre-cropped, OpenAI CLIP's mean and std); BLIP's BERT text encoder reads the prompt (BERT's uncased
tokenizer, padded to 35 tokens) with cross-attention to the image's tokens in every layer; the [CLS] state goes
through an MLP head (768-1024-128-64-16-1, no activations), and the result is standardised by the package's
mean and std. The package needs timm and fairscale and downloads BLIP's tokenizer and its checkpoint when it
loads; here the same networks are transformers' BLIP modules (``BlipVisionModel``, and ``BlipTextModel`` with
its cross-attention layers, both ported from BLIP's code), filled from the checkpoint's state dict by a key map.
The preprocessing is written in torch, so the reward is differentiable (as ImageReward's ReFL uses it).

The checkpoint is ``ImageReward.pt`` with ``med_config.json`` (the text encoder's config) of the hub repo
``THUDM/ImageReward``; the tokenizer is ``bert-base-uncased``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from genrl.errors import GenrlError
from genrl.rewards.clip import ClipImageTransform, load_pretrained
from genrl.rewards.hps import OPENAI_MEAN, OPENAI_STD, fetch_hub_file, load_state_dict, skipped_init

NAME = "imagereward"
HUB_REPO = "THUDM/ImageReward"
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # the package's standardisation of the head's output
MAX_TOKENS = 35
HEAD_LAYERS = (0, 2, 4, 6, 7)  # the MLP's Linear layers in its Sequential (dropouts between the first four)
_VISION = "blip.visual_encoder."
_TEXT = "blip.text_encoder."


def _vision_config(state: dict[str, torch.Tensor], heads: int | None) -> Any:
    """BLIP's ViT (timm-style, LayerNorm eps 1e-6, 4x MLP) as a BlipVisionConfig, read off the weights' shapes."""
    from transformers import BlipVisionConfig

    width = state[f"{_VISION}cls_token"].shape[-1]
    patch = state[f"{_VISION}patch_embed.proj.weight"].shape[-1]
    grid = round((state[f"{_VISION}pos_embed"].shape[1] - 1) ** 0.5)
    depth = len({k.split(".")[3] for k in state if k.startswith(f"{_VISION}blocks.")})
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=state[f"{_VISION}blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth,
        num_attention_heads=heads or width // 64,  # BLIP's ViT-B and ViT-L: 64-d heads
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )


def _text_config(med_config: dict[str, Any], encoder_width: int) -> Any:
    from transformers import BlipTextConfig

    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "hidden_act",
        "layer_norm_eps",
        "pad_token_id",
    )
    # is_decoder builds the cross-attention layers (BLIP's add_cross_attention); the forward stays bidirectional.
    settings = {k: med_config[k] for k in keys if k in med_config}
    return BlipTextConfig(**settings, encoder_hidden_size=encoder_width, is_decoder=True)


def convert_vision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BLIP's VisionTransformer keys -> transformers' BlipVisionModel keys."""
    out = {
        "embeddings.class_embedding": state[f"{_VISION}cls_token"],
        "embeddings.position_embedding": state[f"{_VISION}pos_embed"],
        "embeddings.patch_embedding.weight": state[f"{_VISION}patch_embed.proj.weight"],
        "embeddings.patch_embedding.bias": state[f"{_VISION}patch_embed.proj.bias"],
        "post_layernorm.weight": state[f"{_VISION}norm.weight"],
        "post_layernorm.bias": state[f"{_VISION}norm.bias"],
    }
    names = {
        "norm1": "layer_norm1",
        "attn.qkv": "self_attn.qkv",
        "attn.proj": "self_attn.projection",
        "norm2": "layer_norm2",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for key, value in state.items():
        if key.startswith(f"{_VISION}blocks."):
            i, rest = key[len(f"{_VISION}blocks.") :].split(".", 1)
            module, _, kind = rest.rpartition(".")
            out[f"encoder.layers.{i}.{names[module]}.{kind}"] = value
    return out


class ImageReward:
    """ImageReward v1.0: (MLP(BLIP text encoder's [CLS] | image) - mean) / std."""

    differentiable = True

    def __init__(
        self,
        checkpoint: str | None = None,
        med_config: str | None = None,
        tokenizer: str = "bert-base-uncased",
        vision_heads: str | None = None,
    ):
        path = checkpoint or fetch_hub_file(HUB_REPO, "ImageReward.pt", NAME, "checkpoint")
        state = load_state_dict(path, NAME, "checkpoint")
        config_path = med_config or fetch_hub_file(HUB_REPO, "med_config.json", NAME, "med_config")
        try:
            med = json.loads(Path(config_path).read_text())
        except (OSError, ValueError) as exc:
            raise GenrlError(f"reward '{NAME}': cannot read the text encoder config '{config_path}' ({exc})") from exc
        from transformers import BertTokenizer, BlipTextModel, BlipVisionModel

        self.tokenizer = load_pretrained(BertTokenizer, tokenizer, NAME, "tokenizer")
        try:
            vision_config = _vision_config(state, int(vision_heads) if vision_heads else None)
            vision = convert_vision(state)
            text = {k[len(_TEXT) :]: v for k, v in state.items() if k.startswith(_TEXT)}
            head = [(state[f"mlp.layers.{i}.weight"], state[f"mlp.layers.{i}.bias"]) for i in HEAD_LAYERS]
        except (KeyError, StopIteration) as exc:
            raise GenrlError(
                f"reward '{NAME}': '{path}' is not an ImageReward checkpoint (it has no {exc}); "
                f"pass ImageReward.pt of {HUB_REPO}"
            ) from exc
        with skipped_init():  # every weight is loaded below
            self.vision = BlipVisionModel(vision_config)
            self.text = BlipTextModel(_text_config(med, vision_config.hidden_size), add_pooling_layer=False)
        self.head = torch.nn.Sequential(*(torch.nn.Linear(w.shape[1], w.shape[0]) for w, _ in head))
        head_state = {f"{i}.{p}": t for i, pair in enumerate(head) for p, t in zip(("weight", "bias"), pair)}
        for module, weights, what in (
            (self.vision, vision, "vision encoder"),
            (self.text, text, "text encoder"),
            (self.head, head_state, "MLP head"),
        ):
            missing, unexpected = module.load_state_dict(weights, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            unexpected = [k for k in unexpected if not k.endswith("position_ids")]
            if missing or unexpected:
                raise GenrlError(
                    f"reward '{NAME}': the checkpoint's {what} does not fit its config (missing {missing[:3]}, "
                    f"unexpected {unexpected[:3]}); pass ImageReward.pt with its med_config.json"
                )
            module.eval().requires_grad_(False)
        size = vision_config.image_size
        self.transform = ClipImageTransform(
            SimpleNamespace(
                size={"shortest_edge": size},
                crop_size={"height": size, "width": size},
                image_mean=OPENAI_MEAN,
                image_std=OPENAI_STD,
            )
        )

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        device = images.device
        for module in (self.vision, self.text, self.head):
            module.to(device)
        image_tokens = self.vision(pixel_values=self.transform(images)).last_hidden_state
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        ).to(device)
        states = self.text(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long, device=device),
            is_decoder=False,
        ).last_hidden_state
        return (self.head(states[:, 0].float()).squeeze(-1) - MEAN) / STD

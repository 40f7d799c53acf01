"""Rewards built on CLIP models through transformers: LAION aesthetic, CLIPScore and PickScore.

All three are differentiable: the image preprocessing (resize of the short side, centre crop, normalisation,
as the model's CLIPImageProcessor does it) is written in torch, so the reward's gradient reaches the pixels.
Weights load from a hub id (the local cache when offline) or a local folder.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F

from genrl.errors import GenrlError


def load_pretrained(cls: Any, source: str, reward: str, option: str) -> Any:
    """``cls.from_pretrained(source)`` with a one-line error that says which model is missing and how to get it."""
    try:
        return cls.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise GenrlError(
            f"reward '{reward}' needs the model '{source}', which is neither a local folder nor in the hub cache; "
            f"download it (huggingface-cli download {source}) or pass a local folder: "
            f"--reward '{reward}({option}=PATH)'"
        ) from exc


class ClipImageTransform:
    """CLIPImageProcessor's resize-crop-normalise, differentiable: (B, 3, H, W) in [0, 1] -> pixel_values."""

    def __init__(self, processor: Any):
        size = processor.size
        self.short_side = size.get("shortest_edge") or min(size.get("height", 224), size.get("width", 224))
        crop = processor.crop_size
        self.crop = (crop["height"], crop["width"])
        self.mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        # As transformers' get_resize_output_image_size: the short side to its size, the long side truncated.
        if h <= w:
            size = (self.short_side, int(self.short_side * w / h))
        else:
            size = (int(self.short_side * h / w), self.short_side)
        size = (max(size[0], self.crop[0]), max(size[1], self.crop[1]))
        images = F.interpolate(images.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
        top, left = (size[0] - self.crop[0]) // 2, (size[1] - self.crop[1]) // 2
        images = images[..., top : top + self.crop[0], left : left + self.crop[1]]
        return (images - self.mean.to(images)) / self.std.to(images)


class _ClipReward:
    differentiable = True
    name = "clip"

    def __init__(self, model: str, processor: str | None = None, option: str = "model"):
        from transformers import AutoProcessor, CLIPModel

        self.model = load_pretrained(CLIPModel, model, self.name, option).eval().requires_grad_(False)
        self.processor = load_pretrained(AutoProcessor, processor or model, self.name, "processor")
        self.transform = ClipImageTransform(self.processor.image_processor)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        self.model.to(images.device)
        pixels = self.transform(images).to(self.model.dtype)
        features = self.model.get_image_features(pixel_values=pixels)
        features = getattr(features, "pooler_output", features)
        return F.normalize(features.float(), dim=-1)

    def text_features(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        tokens = self.processor.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
        features = self.model.get_text_features(**tokens)
        features = getattr(features, "pooler_output", features)
        return F.normalize(features.float(), dim=-1)


class AestheticReward(_ClipReward):
    """LAION aesthetic predictor: CLIP ViT-L/14 image embedding, L2-normalised, through the linear MLP head
    768-1024-128-64-16-1 (no activations; its dropouts are inactive at inference)."""

    name = "aesthetic"

    def __init__(self, clip: str = "openai/clip-vit-large-patch14", head: str | None = None):
        from safetensors.torch import load_file

        super().__init__(clip, option="clip")
        if head is None:
            head = str(resources.files("genrl").joinpath("data", "aesthetic", "laion_aesthetic_head.safetensors"))
        try:
            weights = load_file(head)
        except (OSError, ValueError) as exc:
            raise GenrlError(
                f"reward 'aesthetic': cannot read the head '{head}' ({exc}); pass a safetensors file"
            ) from exc
        dims = [768, 1024, 128, 64, 16, 1]
        self.head = torch.nn.Sequential(*(torch.nn.Linear(a, b) for a, b in zip(dims, dims[1:])))
        # The reference keys number the Linear layers 0, 2, 4, 6, 7 (dropouts sit between the first four).
        renamed = {
            f"{i}.{p}": weights[f"layers.{j}.{p}"] for i, j in enumerate((0, 2, 4, 6, 7)) for p in ("weight", "bias")
        }
        self.head.load_state_dict(renamed)
        self.head.eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        features = self.image_features(images)
        return self.head.to(features.device)(features).squeeze(-1)


class ClipScore(_ClipReward):
    """CLIPScore (Hessel et al., 2021): 2.5 * max(cos(image, prompt), 0)."""

    name = "clipscore"

    def __init__(self, model: str = "openai/clip-vit-large-patch14"):
        super().__init__(model)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        cos = (self.image_features(images) * self.text_features(prompts, images.device)).sum(-1)
        return 2.5 * cos.clamp(min=0)


class PickScore(_ClipReward):
    """PickScore (Kirstain et al., 2023): a CLIP-H fine-tuned on human preferences; logit_scale * cos."""

    name = "pickscore"

    def __init__(
        self, model: str = "yuvalkirstain/PickScore_v1", processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    ):
        super().__init__(model, processor)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        cos = (self.image_features(images) * self.text_features(prompts, images.device)).sum(-1)
        return self.model.logit_scale.exp().to(cos) * cos

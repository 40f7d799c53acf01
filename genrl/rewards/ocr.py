"""Text rendering, as Flow-GRPO's OCR reward scores it: how closely what an OCR model reads matches the quoted text.

Flow-GRPO's rule (flow_grpo/ocr.py): the target is the text between the prompt's first two double quotes; both
the target and the recognised text lose their spaces and are lower-cased; the reward is 1 when the target occurs
in the recognised text, else 1 - d / len(target) with d the Levenshtein distance between the two, capped at
len(target) (so the reward is in [0, 1]). Flow-GRPO reads the image with PaddleOCR (text detection, then
recognition); here the reader is a transformers VisionEncoderDecoder OCR model, TrOCR by default, which
recognises one line of text in the whole image (no detection step: text that fills a small part of a large
scene reads worse than with a detector). Not differentiable.
"""

from __future__ import annotations

from typing import Any

import torch

from genrl.errors import GenrlError
from genrl.images import pil_images
from genrl.rewards.clip import load_pretrained

NAME = "ocr"


def quoted_text(prompt: str) -> str:
    """The text the prompt asks to render: between its first two double quotes (Flow-GRPO's prompt.split('"')[1])."""
    parts = prompt.split('"')
    if len(parts) < 3 or not parts[1].replace(" ", ""):
        raise GenrlError(
            f"reward '{NAME}' needs the text to render in double quotes in every prompt, as in "
            f"'a sign that says \"open\"'; the prompt {prompt!r} has no quoted text"
        )
    return parts[1]


def levenshtein(a: str, b: str) -> int:
    """Edit distance: the fewest insertions, deletions and substitutions of one character that turn a into b."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def ocr_score(recognized: str, target: str) -> float:
    """Flow-GRPO's OCR reward of ``recognized`` text for the ``target`` text."""
    recognized, target = recognized.replace(" ", "").lower(), target.replace(" ", "").lower()
    distance = 0 if target in recognized else min(levenshtein(recognized, target), len(target))
    return 1 - distance / len(target)


class OCRReward:
    """Reads each image with a VisionEncoderDecoder OCR model and scores the text by ``ocr_score``."""

    differentiable = False

    def __init__(
        self, model: str = "microsoft/trocr-base-printed", processor: str | None = None, max_new_tokens: str = "32"
    ):
        from transformers import AutoProcessor, VisionEncoderDecoderModel

        self.model = load_pretrained(VisionEncoderDecoderModel, model, NAME, "model").eval()
        self.processor = load_pretrained(AutoProcessor, processor or model, NAME, "processor" if processor else "model")
        self.max_new_tokens = int(max_new_tokens)

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> list[str]:
        """The text the model reads in each image (8-bit RGB, as Flow-GRPO hands PaddleOCR its images)."""
        pils = pil_images(images)
        pixels = self.processor(images=pils, return_tensors="pt").pixel_values.to(self.model.device, self.model.dtype)
        out = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.processor.batch_decode(out, skip_special_tokens=True)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        targets = [quoted_text(p) for p in prompts]  # before the model runs: a bad prompt costs no OCR
        texts = self.read(images)
        for entry, text in zip(metadata, texts):
            entry["ocr_text"] = text  # kept with the sample, for inspection
        return torch.tensor([ocr_score(text, target) for text, target in zip(texts, targets)])

"""Shapes-world prompt alignment: the probability, under the world's attribute classifier, that an image shows
every attribute its prompt asks for (count, size, colour, shape, background). Differentiable in the image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genrl.errors import GenrlError


class ShapesAlignment:
    differentiable = True

    def __init__(self, model_dir: str | Path | None = None):
        self.model_dir = Path(model_dir) if model_dir else None
        self._classifier = None

    @property
    def classifier(self):
        if self._classifier is None:
            from genrl.shapes import shipped_dir
            from genrl.shapes.components import ShapesClassifier

            folder = self.model_dir or shipped_dir() / "reward"
            if not (folder / "config.json").exists():
                raise GenrlError(
                    f"shapes reward model not found in {folder}; run `python -m genrl.shapes.pretrain` to build it"
                )
            self._classifier = ShapesClassifier.from_pretrained(folder).eval().requires_grad_(False)
        return self._classifier

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        log_prob = torch.zeros(len(prompts), device=images.device)
        for logits, labels in self._judged(images, prompts):
            log_prob = log_prob + logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
        return log_prob.exp()

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, prompts: list[str]) -> float:
        """The fraction of images in which the classifier finds every attribute its prompt asks for: a guard
        against reward hacking (a JPEG reward rises as the shapes are erased; this falls)."""
        correct = torch.ones(len(prompts), dtype=torch.bool, device=images.device)
        for logits, labels in self._judged(images, prompts):
            correct &= logits.argmax(1) == labels
        return correct.float().mean().item()

    def _judged(self, images: torch.Tensor, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(classifier logits, prompted label) of each attribute."""
        from genrl.shapes.world import ATTRIBUTES, RESOLUTION, parse_prompt

        scenes = [parse_prompt(p) for p in prompts]
        bad = [p for p, s in zip(prompts, scenes) if s is None]
        if bad:
            raise GenrlError(
                f"prompt {bad[0]!r} is not a shapes-world prompt; use --prompts shapes_train or shapes_heldout"
            )
        classifier = self.classifier.to(images.device)
        if images.shape[-2:] != (RESOLUTION, RESOLUTION):  # the classifier sees the world's 64 x 64 images
            images = torch.nn.functional.interpolate(
                images, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True
            )
        logits = classifier(images.float())
        return [
            (logits[name], torch.tensor([s.label()[name] for s in scenes], device=images.device)) for name in ATTRIBUTES
        ]


def is_shapes_prompt(prompt: str) -> bool:
    from genrl.shapes.world import parse_prompt

    return parse_prompt(prompt) is not None


shapes_alignment = ShapesAlignment()

"""The shapes world: 64x64 images drawn from plain-English prompts, deterministic given a seed.

    "a small yellow triangle on a white background"
    "two large red circles on a blue background"

Attributes: count (1-3), size (small, large), colour (6), shape (4), background (4). Every shape in an image
shares colour, shape and size; a shape is never drawn in its background's colour. A fixed set of
(colour, shape) pairs is held out of all training, to check that fine-tuned models still follow prompts they
never saw (RLCM paper, Fig. 8).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

RESOLUTION = 64
COUNTS = ("a", "two", "three")
SIZES = ("small", "large")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUNDS = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "blue": (40, 80, 220),
}
HELD_OUT_PAIRS = frozenset({("green", "triangle"), ("purple", "circle"), ("orange", "square"), ("yellow", "diamond")})
ATTRIBUTES = {
    "count": COUNTS,
    "size": SIZES,
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "background": tuple(BACKGROUNDS),
}
# Radius in pixels of the circle that bounds a shape, per size.
_RADIUS = {"small": (6.0, 8.0), "large": (10.5, 13.0)}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    count: str
    size: str
    colour: str
    shape: str
    background: str

    @property
    def prompt(self) -> str:
        noun = self.shape if self.count == "a" else self.shape + "s"
        return f"{self.count} {self.size} {self.colour} {noun} on a {self.background} background"

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT_PAIRS

    def label(self) -> dict[str, int]:
        return {name: values.index(getattr(self, name)) for name, values in ATTRIBUTES.items()}


_PROMPT = re.compile(
    rf"^(?P<count>{'|'.join(COUNTS)}) (?P<size>{'|'.join(SIZES)}) (?P<colour>{'|'.join(COLOURS)}) "
    rf"(?P<shape>{'|'.join(SHAPES)})s? on a (?P<background>{'|'.join(BACKGROUNDS)}) background$"
)


def parse_prompt(prompt: str) -> Scene | None:
    """The scene a prompt asks for, or None if it is not a shapes-world prompt."""
    match = _PROMPT.match(prompt.strip().lower())
    return Scene(**match.groupdict()) if match else None


def all_scenes() -> list[Scene]:
    scenes = [Scene(*combo) for combo in itertools.product(COUNTS, SIZES, COLOURS, SHAPES, BACKGROUNDS)]
    return [s for s in scenes if COLOURS[s.colour] != BACKGROUNDS[s.background]]


def train_scenes() -> list[Scene]:
    return [s for s in all_scenes() if not s.held_out]


def held_out_scenes() -> list[Scene]:
    return [s for s in all_scenes() if s.held_out]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = {"square": 4, "triangle": 3, "diamond": 4}[shape]
    offset = {"square": math.pi / 4, "triangle": -math.pi / 2, "diamond": 0.0}[shape] + angle
    aspect = 0.7 if shape == "diamond" else 1.0  # a diamond is a rhombus, narrower than it is tall
    return [
        (
            cx + aspect * r * math.cos(offset + 2 * math.pi * k / corners),
            cy + r * math.sin(offset + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """One image (64, 64, 3) uint8. Position, exact radius and a small rotation vary with ``rng``."""
    s = _SUPERSAMPLE
    image = Image.new("RGB", (RESOLUTION * s, RESOLUTION * s), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    n = COUNTS.index(scene.count) + 1
    lo, hi = _RADIUS[scene.size]
    placed: list[tuple[float, float, float]] = []
    attempts = 0
    while len(placed) < n:
        attempts += 1
        if attempts % 50 == 0:  # the first shapes left no room for the rest: lay them all out again
            placed = []
        r = rng.uniform(lo, hi)
        cx, cy = rng.uniform(r + 1, RESOLUTION - r - 1, size=2)
        if all(math.hypot(cx - x, cy - y) > r + q + 2 for x, y, q in placed):
            placed.append((cx, cy, r))
    colour = COLOURS[scene.colour]
    for cx, cy, r in placed:
        angle = rng.uniform(-0.25, 0.25) if scene.shape != "circle" else 0.0
        if scene.shape == "circle":
            draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=colour)
        else:
            draw.polygon([(x * s, y * s) for x, y in _polygon(scene.shape, cx, cy, r, angle)], fill=colour)
    return np.asarray(image.resize((RESOLUTION, RESOLUTION), Image.Resampling.BOX))


def sample_dataset(
    num: int, seed: int, split: Literal["train", "held_out", "all"] = "train"
) -> tuple[np.ndarray, list[Scene]]:
    """``num`` random scenes of ``split`` and their images (num, 64, 64, 3) uint8."""
    rng = np.random.default_rng(seed)
    pool = {"train": train_scenes, "held_out": held_out_scenes, "all": all_scenes}[split]()
    scenes = [pool[i] for i in rng.integers(len(pool), size=num)]
    if not num:
        return np.zeros((0, RESOLUTION, RESOLUTION, 3), np.uint8), scenes
    return np.stack([render(scene, rng) for scene in scenes]), scenes

"""An example preference set for Diffusion-DPO's ``--dpo.pairs``, drawn in the shapes world.

    python -m genrl.shapes.preference_pairs OUT --pairs N [--seed S]

writes ``OUT/pairs.jsonl``, one line per pair ``{"prompt": ..., "chosen": "images/00000-chosen.png", "rejected":
"images/00000-rejected.png"}``, and the 64 x 64 PNGs under ``OUT/images``. The chosen image is drawn from its prompt's
scene; the rejected one from the same scene with another colour or another shape (never the background's colour,
never a held-out colour-shape pair), so the pair prefers the image that follows the prompt. Deterministic in the seed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from genrl.shapes.world import BACKGROUNDS, COLOURS, SHAPES, Scene, render, train_scenes


def mismatched(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with another colour or another shape (chosen at random), still drawable and not held out."""
    attribute = ("colour", "shape")[rng.integers(2)]
    if attribute == "colour":
        options = [replace(scene, colour=c) for c in COLOURS if c != scene.colour]
        options = [s for s in options if COLOURS[s.colour] != BACKGROUNDS[s.background]]
    else:
        options = [replace(scene, shape=shape) for shape in SHAPES if shape != scene.shape]
    options = [s for s in options if not s.held_out]
    return options[rng.integers(len(options))]


def write_preference_pairs(out: str | Path, pairs: int, seed: int = 0) -> Path:
    """``pairs`` pairs in folder ``out`` (created); returns its pairs.jsonl."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = train_scenes()
    lines = []
    for i in range(pairs):
        scene = pool[rng.integers(len(pool))]
        record = {"prompt": scene.prompt}
        for name, drawn in (("chosen", scene), ("rejected", mismatched(scene, rng))):
            path = f"images/{i:05d}-{name}.png"
            Image.fromarray(render(drawn, rng)).save(out / path)
            record[name] = path
        lines.append(json.dumps(record))
    index = out / "pairs.jsonl"
    index.write_text("".join(line + "\n" for line in lines))
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m genrl.shapes.preference_pairs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out", type=Path, help="the folder to write (pairs.jsonl and images/)")
    parser.add_argument("--pairs", type=int, default=256, help="how many pairs (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="the random seed (default 0)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    if (args.out / "pairs.jsonl").exists():
        parser.error(f"{args.out} already holds a pairs.jsonl; pick another folder")
    try:
        index = write_preference_pairs(args.out, args.pairs, args.seed)
    except OSError as exc:
        parser.exit(2, f"error: cannot write {args.out} ({exc.strerror or exc}); pick a folder you can write\n")
    print(f"{args.pairs} preference pairs: {index}")


if __name__ == "__main__":
    main()

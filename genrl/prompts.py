"""Prompt sets: built-in names, a text file with one prompt per line, or a ``.jsonl`` file of records that carry
a ``prompt`` and the reward's metadata for it (GenEval's format: ``{"tag", "include", "prompt"}``).

Built-in lists are copied from the project's shared data (``simple_animals`` and the ImageNet class names
that DDPO uses; ``imagenet_animals`` is classes 0-397, the animals). ``shapes_train`` and ``shapes_heldout`` are
the embedded shapes world's prompts, without and with its held-out (colour, shape) pairs. ``geneval`` is GenEval's
553 evaluation prompts with their metadata (``load_prompt_records``), which the ``geneval`` reward reads.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from genrl.errors import GenrlError

MAX_PROMPT_CHARS = 2000
"""Longer prompt lines are refused. A text encoder reads 77 tokens (a few hundred characters); a megabyte line is a
wrong file, and it would travel to every reward call and server request."""


def _packaged(name: str) -> list[str]:
    text = resources.files("genrl").joinpath("data", "prompts", name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _shapes(held_out: bool) -> list[str]:
    from genrl.shapes.world import held_out_scenes, train_scenes

    return [s.prompt for s in (held_out_scenes() if held_out else train_scenes())]


def _animals_activities() -> list[str]:
    """DDPO's prompt-alignment prompts: "a/an {simple animal} {activity}"."""
    prompts = []
    for animal in _packaged("simple_animals.txt"):
        article = "an" if animal[0] in "aeiou" else "a"
        prompts += [f"{article} {animal} {activity}" for activity in _packaged("activities.txt")]
    return prompts


BUILTIN_PROMPTS = {
    "simple_animals": lambda: _packaged("simple_animals.txt"),
    "imagenet_animals": lambda: _packaged("imagenet_classes.txt")[:398],
    "animals_activities": _animals_activities,
    "shapes_train": lambda: _shapes(held_out=False),
    "shapes_heldout": lambda: _shapes(held_out=True),
    "geneval": lambda: [r["prompt"] for r in _geneval_records()],
}


def _geneval_records() -> list[dict[str, Any]]:
    text = resources.files("genrl").joinpath("data", "prompts", "geneval_metadata.jsonl").read_text(encoding="utf-8")
    return _records(text, "geneval")


def _records(text: str, spec: str) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise GenrlError(
                f"prompt file '{spec}': line {number} is not JSON ({exc}); write one record a line"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise GenrlError(f'prompt file \'{spec}\': line {number} has no "prompt" string; write {{"prompt": ...}}')
        records.append(record)
    return records


def load_prompt_records(spec: str) -> list[dict[str, Any]] | None:
    """The records (``prompt`` and metadata) of a ``.jsonl`` prompt file or of ``geneval``; None for other sets."""
    if spec == "geneval":
        return _geneval_records()
    if spec in BUILTIN_PROMPTS or not spec.endswith(".jsonl"):
        return None
    return _records(_read(spec), spec)


def metadata_by_prompt(spec: str) -> dict[str, dict[str, Any]] | None:
    """Each prompt's metadata (its record less ``prompt``), which the reward receives beside it; None for a set
    without records."""
    records = load_prompt_records(spec)
    if records is None:
        return None
    return {r["prompt"].strip(): {k: v for k, v in r.items() if k != "prompt"} for r in records}


def _read(spec: str) -> str:
    path = Path(spec)
    if not path.is_file():
        raise GenrlError(
            f"prompts '{spec}' is neither a built-in set ({', '.join(BUILTIN_PROMPTS)}) nor a file; "
            "pass a set name or a text file with one prompt per line"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GenrlError(
            f"prompt file '{spec}' is not UTF-8 text (byte {exc.start}); save it as UTF-8, one prompt per line"
        ) from None


def load_prompts(spec: str) -> list[str]:
    if spec in BUILTIN_PROMPTS:
        return BUILTIN_PROMPTS[spec]()
    text = _read(spec)
    if spec.endswith(".jsonl"):
        prompts = [r["prompt"].strip() for r in _records(text, spec)]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise GenrlError(f"prompt file '{spec}' has no prompts; write one prompt per line")
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    if len(prompts[longest]) > MAX_PROMPT_CHARS:
        raise GenrlError(
            f"prompt file '{spec}': prompt {longest + 1} is {len(prompts[longest])} characters, over the limit of "
            f"{MAX_PROMPT_CHARS}; is it a prompt list, one prompt per line?"
        )
    return prompts

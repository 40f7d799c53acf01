"""From a ``--reward`` string to a checked reward.

    jpeg_compressibility                      a built-in, by name
    clipscore(model=/path/to/clip)            a built-in with options
    my_package.rewards:brightness             your own function (or class instance)
    my_package.rewards:Scorer(size=large)     your own factory, called with the options
    aesthetic=0.7,clipscore=0.3               a weighted sum; each part is logged on its own
    http://127.0.0.1:8000                     a reward server (python -m genrl.rewards.serve)

Installed packages add names through the entry-point group ``genrl.rewards``; each entry point names a callable
that returns a reward (a factory, so that heavy models load only when asked for).
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import torch

from genrl.errors import GenrlError
from genrl.plugins import describe, import_object, load_entry_point
from genrl.rewards.base import CheckedReward, RewardFn


def _jpeg(kind: str) -> Callable[[], RewardFn]:
    def make() -> RewardFn:
        from genrl.rewards import jpeg

        return getattr(jpeg, kind)

    return make


def _lazy(module: str, attr: str) -> Callable[..., RewardFn]:
    def make(**options: str) -> RewardFn:
        return getattr(importlib.import_module(module), attr)(**options)

    return make


# name -> factory(**options) -> reward
BUILTIN_REWARDS: dict[str, Callable[..., RewardFn]] = {
    "jpeg_compressibility": _jpeg("jpeg_compressibility"),
    "jpeg_incompressibility": _jpeg("jpeg_incompressibility"),
    "shapes_alignment": _lazy("genrl.rewards.shapes", "ShapesAlignment"),
    "aesthetic": _lazy("genrl.rewards.clip", "AestheticReward"),
    "clipscore": _lazy("genrl.rewards.clip", "ClipScore"),
    "pickscore": _lazy("genrl.rewards.clip", "PickScore"),
    "vlm_bertscore": _lazy("genrl.rewards.vlm", "VLMBertScore"),
    "geneval": _lazy("genrl.rewards.geneval", "GenEval"),
    "vlm_judge": _lazy("genrl.rewards.judge", "VLMJudge"),
    "hpsv2": _lazy("genrl.rewards.hps", "HPSv2"),
    "imagereward": _lazy("genrl.rewards.imagereward", "ImageReward"),
    "ocr": _lazy("genrl.rewards.ocr", "OCRReward"),
}


def _plugin_factories() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="genrl.rewards")}


def reward_names() -> list[str]:
    return sorted({*BUILTIN_REWARDS, *_plugin_factories()})


class CompositeReward:
    """A weighted sum of rewards. ``components`` returns each part, checked and named."""

    def __init__(self, parts: list[tuple[str, float, CheckedReward]]):
        self.parts = parts
        self.differentiable = all(reward.differentiable for _, _, reward in parts)

    def components(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> dict[str, torch.Tensor]:
        return {name: reward(images, prompts, metadata) for name, _, reward in self.parts}

    def combine(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum, on the first part's device (a CPU reward such as jpeg or ocr beside a CUDA model's)."""
        device = components[self.parts[0][0]].device
        return sum(weight * components[name].to(device) for name, weight, _ in self.parts)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        return self.combine(self.components(images, prompts, metadata))


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


_TERM = re.compile(r"^(?P<name>[A-Za-z_][\w.]*(?::[A-Za-z_]\w*)?)(?:\((?P<options>.*)\))?$")


def _single(term: str) -> CheckedReward:
    match = _TERM.match(term.strip())
    if not match:
        raise GenrlError(f"cannot read reward '{term}'; write NAME, NAME(key=value, ...), module:function or a URL")
    name, raw = match["name"], match["options"]
    options: dict[str, str] = {}
    for item in _split_top_level(raw or ""):
        if item.strip():
            key, eq, value = item.partition("=")
            if not eq:
                raise GenrlError(f"reward '{term}': option '{item.strip()}' needs a value (key=value)")
            options[key.strip()] = value.strip()
    plugins = _plugin_factories()
    if name in BUILTIN_REWARDS or name in plugins:
        factory = BUILTIN_REWARDS[name] if name in BUILTIN_REWARDS else load_entry_point(plugins[name], "reward")
        return CheckedReward(_build(name, factory, options), name)
    if ":" not in name:
        raise GenrlError(
            f"unknown reward '{name}'; use one of {', '.join(reward_names())} or 'package.module:function'"
        )
    fn = import_object(name, "reward")
    if not callable(fn):
        raise GenrlError(f"reward '{name}': '{name.partition(':')[2]}' is not callable; name a function or a class")
    # module:function is the reward itself; module:Factory(key=value) and module:Factory() build it.
    return CheckedReward(_build(name, fn, options) if raw is not None else fn, name)


def _build(name: str, factory: Callable[..., RewardFn], options: dict[str, str]) -> RewardFn:
    try:
        return factory(**options)
    except GenrlError:
        raise
    except TypeError as exc:
        raise GenrlError(
            f"reward '{name}' does not take the options {sorted(options)}; see docs/rewards.md for its options"
        ) from exc
    except (Exception, SystemExit) as exc:  # the user's factory failed: one line that names it, as a call would
        raise GenrlError(f"reward '{name}' could not be built: it raised {describe(exc)}; fix its factory") from exc


def _weighted(term: str) -> tuple[str, float | None]:
    """'name(k=v)=0.7' -> ('name(k=v)', 0.7); a term without a top-level '=' has no weight."""
    depth, split = 0, -1
    for i, ch in enumerate(term):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "=" and depth == 0:
            split = i
    if split < 0:
        return term.strip(), None
    body, weight = term[:split].strip(), term[split + 1 :].strip()
    try:
        value = float(weight)
    except ValueError as exc:
        raise GenrlError(f"reward weight '{weight}' of '{body}' is not a number; write NAME=0.5") from exc
    if not math.isfinite(value):  # caught here, not as a "NaN reward" after a batch has been sampled
        raise GenrlError(f"reward weight '{weight}' of '{body}' is not a finite number; write NAME=0.5")
    return body, value


def load_reward(spec: str) -> CheckedReward:
    """The reward a ``--reward`` string names (see the module docstring), wrapped in output checks."""
    spec = spec.strip()
    if spec.startswith(("http://", "https://")):
        from genrl.rewards.remote import RemoteReward

        return CheckedReward(RemoteReward(spec), spec)
    terms = [_weighted(term) for term in _split_top_level(spec)]
    if len(terms) == 1 and terms[0][1] is None:
        return _single(spec)
    parts = []
    for body, weight in terms:
        reward = _single(body)
        parts.append((reward.name, 1.0 if weight is None else weight, reward))
    names = [name for name, _, _ in parts]
    if len(set(names)) != len(names):
        raise GenrlError(f"reward '{spec}' names a part twice; give each part once")
    return CheckedReward(CompositeReward(parts), spec)

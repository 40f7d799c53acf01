"""A vision-language model as the judge, over an OpenAI-compatible chat API: the way vLLM and SGLang serve
UnifiedReward, Qwen-VL and the like.

    python -m vllm.entrypoints.openai.api_server --model CodeGoat24/UnifiedReward-qwen-7b --port 8080
    python -m genrl.train --reward "vlm_judge(url=http://127.0.0.1:8080/v1, model=CodeGoat24/UnifiedReward-qwen-7b)"

Each image (each pair, pairwise) is one ``POST {url}/chat/completions``: one user message whose content is the
image(s) as base64 PNG data URLs (``image_url`` parts) and the template's text with ``{prompt}`` replaced by the
prompt. Greedy decoding (``temperature`` 0) unless set otherwise.

- ``mode=pointwise``: the number in the answer (``pattern``'s first group; by default the last "Score: X" /
  "Final Score: X", else an answer that is a bare number), in [``min``, ``max``], normalised to [0, 1].
- ``mode=pairwise`` (Pref-GRPO): within each prompt's group (the batch's images of one prompt), every pair of
  images is compared once, the earlier as "Image 1"; an image's reward is its win rate, wins / comparisons (0.5
  for an image alone). ``pattern``'s first group reads "1" or "2" (by default "Image 1 is better").

Requests run ``concurrency`` at a time (the server batches them); each try ends by ``timeout`` seconds, and up to
``retries`` tries are made where no answer came or the server said it is busy (408, 429, 502-504), after
``backoff`` x 2^k seconds: the reward server client's rules and code (``genrl.rewards.remote.JsonClient``). A
batch in which any answer holds no score stops the run with one line that quotes one such answer.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from genrl.errors import GenrlError
from genrl.rewards.remote import JsonClient, images_to_png, parse_url

NAME = "vlm_judge"
URL_FORM = "http://HOST:PORT/v1?timeout=SECONDS&retries=N&backoff=SECONDS"

# UnifiedReward's pointwise question, as flow_grpo's unifiedreward_score_sglang asks it (its "<image>\n" dropped:
# the image travels as a content part).
POINTWISE_TEMPLATE = (
    "You are given a text caption and a generated image based on that caption. Your task is to evaluate this image "
    "based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns with the provided "
    "caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the "
    "caption.\n2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail "
    "preservation, color accuracy, and overall aesthetic appeal.\nBased on the above criteria, assign a score from 1 "
    "to 5 after 'Final Score:'.\nYour task is provided as follows:\nText Caption: [{prompt}]"
)
# UnifiedReward-Think's pairwise question in short (Pref-GRPO's template asks for a scored rationale first).
PAIRWISE_TEMPLATE = (
    "You are given a text caption and two images generated from it. Compare them on semantic consistency with the "
    "caption, aesthetics and authenticity, and decide which image is better.\nThe caption is: [{prompt}]\n"
    "End your answer with exactly one of: <answer>Image 1 is better</answer> or <answer>Image 2 is better</answer>"
)
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
POINTWISE_PATTERN = rf"(?i)score\s*(?:\([^)]*\))?\s*[:=]?\s*\**\s*({NUMBER})"
PAIRWISE_PATTERN = r"(?i)image\s*([12])\s*is\s*(?:the\s*)?(?:better|superior|preferred)"


def _truthy(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise GenrlError(f"reward '{NAME}': {name}={value} is not true or false")


def _number(name: str, value: str, kind: type = float, low: float | None = None) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number != number or (low is not None and number < low):
        bound = "" if low is None else f" >= {low:g}"
        raise GenrlError(f"reward '{NAME}': {name}={value} must be a {kind.__name__}{bound}")
    return number


class VLMJudge(JsonClient):
    """``--reward vlm_judge(url=..., model=..., mode=pointwise|pairwise, ...)``; see the module docstring."""

    differentiable = False
    service = "VLM judge"
    json_hint = "is url= an OpenAI-compatible API?"

    def __init__(
        self,
        url: str | None = None,
        model: str | None = None,
        mode: str = "pointwise",
        template: str | None = None,
        template_file: str | None = None,
        pattern: str | None = None,
        min: str = "1",  # the option names of the command line
        max: str = "5",
        timeout: str = "120",
        retries: str = "3",
        backoff: str = "0.5",
        concurrency: str = "8",
        max_tokens: str = "1024",
        temperature: str = "0",
        api_key_env: str | None = None,
        check_model: str = "true",
    ):
        if not url or not model:
            raise GenrlError(
                f"reward '{NAME}' needs the server and the model: --reward '{NAME}(url=http://HOST:PORT/v1, "
                "model=NAME)' (as vllm serve / sglang.launch_server name it)"
            )
        if mode not in ("pointwise", "pairwise"):
            raise GenrlError(f"reward '{NAME}': mode={mode} is neither pointwise nor pairwise")
        base, settings = parse_url(url, {"timeout": timeout, "retries": retries, "backoff": backoff}, URL_FORM)
        if urlsplit(base).path == "":  # http://host:port: the OpenAI API's root
            base += "/v1"
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise GenrlError(f"reward '{NAME}': api_key_env={api_key_env} names no set environment variable")
            headers["Authorization"] = f"Bearer {key}"
        super().__init__(base, settings["timeout"], settings["retries"], settings["backoff"], headers)
        self.model, self.mode = model, mode
        self.low, self.high = _number("min", min), _number("max", max)
        if not self.high > self.low:
            raise GenrlError(f"reward '{NAME}': max={max} must be above min={min}")
        self.concurrency = _number("concurrency", concurrency, int, 1)
        self.max_tokens = _number("max_tokens", max_tokens, int, 1)
        self.temperature = _number("temperature", temperature, float, 0)
        if template is not None and template_file is not None:
            raise GenrlError(f"reward '{NAME}': give template or template_file, not both")
        if template_file is not None:
            try:
                template = Path(template_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise GenrlError(f"reward '{NAME}': cannot read template_file={template_file} ({exc})") from None
        self.template = template or (POINTWISE_TEMPLATE if mode == "pointwise" else PAIRWISE_TEMPLATE)
        try:
            self.pattern = re.compile(pattern or (POINTWISE_PATTERN if mode == "pointwise" else PAIRWISE_PATTERN))
        except re.error as exc:
            raise GenrlError(f"reward '{NAME}': pattern={pattern} is not a regular expression ({exc})") from None
        if self.pattern.groups < 1:
            raise GenrlError(f"reward '{NAME}': pattern={pattern} needs a group (...) around what it reads")
        if _truthy("check_model", check_model):
            self._check_model()

    # -- the server ---------------------------------------------------------------------------------------------
    def _check_model(self) -> None:
        """Reach the server before training (GET /models) and refuse a model it does not serve."""
        listing = self._request("GET", "/models", None, timeout=min(self.timeout, 10.0))
        served = [m.get("id") for m in listing.get("data") or [] if isinstance(m, dict)]
        if served and self.model not in served:
            raise GenrlError(
                f"VLM judge {self.url} does not serve the model '{self.model}'; it serves {', '.join(map(str, served))}"
                f": pass model=NAME"
            )

    def _gave_up(self, last: str) -> str:
        return (
            f"VLM judge {self.url} failed {self.retries} times ({last}); check that the server runs (vllm serve "
            "MODEL, python -m sglang.launch_server) and that url= is its OpenAI API base (http://HOST:PORT/v1)"
        )

    def ask(self, images: list[str], text: str) -> str:
        """The model's answer to one user message: ``images`` (base64 PNG) then ``text``."""
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}} for png in images
        ]
        content.append({"type": "text", "text": text})
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        answer = self._request("POST", "/chat/completions", json.dumps(payload).encode(), timeout=self.timeout)
        try:
            message = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            message = None
        if isinstance(message, list):  # content as parts
            message = "".join(p.get("text", "") for p in message if isinstance(p, dict))
        if not isinstance(message, str):
            raise GenrlError(f"VLM judge {self.url} answered without choices[0].message.content: {str(answer)[:200]}")
        return message

    def ask_all(self, questions: list[tuple[list[str], str]]) -> list[str]:
        """``ask`` for each (images, text), ``concurrency`` at a time; the first failure ends the batch."""
        if not questions:
            return []
        with ThreadPoolExecutor(min(self.concurrency, len(questions)), thread_name_prefix=NAME) as pool:
            futures = [pool.submit(self.ask, images, text) for images, text in questions]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    # -- reading the answers ------------------------------------------------------------------------------------
    def prompt_text(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt)

    def read_score(self, answer: str) -> float | None:
        """The answer's score normalised to [0, 1], or None: the last match of ``pattern``, else an answer that is
        a bare number; None too where it lies outside [min, max]."""
        matches = self.pattern.findall(answer)
        raw = matches[-1] if matches else answer.strip().rstrip(".")
        raw = raw[0] if isinstance(raw, tuple) else raw
        try:
            value = float(raw)
        except ValueError:
            return None
        if not self.low <= value <= self.high:
            return None
        return (value - self.low) / (self.high - self.low)

    def read_preference(self, answer: str) -> int | None:
        """0 where the answer prefers Image 1, 1 where Image 2, None where it says neither."""
        matches = self.pattern.findall(answer)
        raw = matches[-1] if matches else answer.strip().rstrip(".")
        raw = raw[0] if isinstance(raw, tuple) else raw
        return {"1": 0, "2": 1}.get(raw.strip())

    def _refuse(self, answers: list[str], bad: list[int], what: str) -> None:
        if bad:
            example = answers[bad[0]]
            raise GenrlError(
                f"reward '{NAME}': {len(bad)} of {len(answers)} answers of {self.model} hold no {what}, e.g. "
                f"{example[:200]!r}; fix the template (template=, template_file=) or how answers are read (pattern=)"
            )

    # -- the reward ---------------------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        pngs = images_to_png(images)
        if self.mode == "pointwise":
            answers = self.ask_all([([png], self.prompt_text(p)) for png, p in zip(pngs, prompts)])
            scores = [self.read_score(a) for a in answers]
            self._refuse(
                answers, [i for i, s in enumerate(scores) if s is None], f"score in [{self.low:g}, {self.high:g}]"
            )
            return torch.tensor(scores, dtype=torch.float32)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, prompt in enumerate(prompts):
            groups[prompt].append(i)
        pairs = [(i, j) for members in groups.values() for i, j in itertools.combinations(members, 2)]
        answers = self.ask_all([([pngs[i], pngs[j]], self.prompt_text(prompts[i])) for i, j in pairs])
        winners = [self.read_preference(a) for a in answers]
        self._refuse(answers, [k for k, w in enumerate(winners) if w is None], "preference for Image 1 or 2")
        return win_rates(len(prompts), pairs, winners)


def win_rates(n: int, pairs: list[tuple[int, int]], winners: list[int]) -> torch.Tensor:
    """Each item's wins / comparisons over ``pairs`` (``winners``: 0 the pair's first, 1 its second); 0.5 where an
    item has no comparison."""
    wins, played = [0.0] * n, [0] * n
    for (i, j), winner in zip(pairs, winners):
        wins[(i, j)[winner]] += 1
        played[i] += 1
        played[j] += 1
    return torch.tensor([w / p if p else 0.5 for w, p in zip(wins, played)], dtype=torch.float32)

"""A reward computed by a server (``python -m genrl.rewards.serve``): JSON over HTTP, images as PNG, no pickle.

    POST /score  {"prompts": [...], "metadata": [...], "images": ["<base64 PNG>", ...]}
                 -> 200 {"rewards": [...]}   or   4xx/5xx {"error": "..."}
    GET  /info   -> {"reward": NAME, "differentiable": false}

Only what may pass is retried: no answer (refused, reset, timed out) and 408, 429, 502, 503, 504. Any other
error (a malformed request, or 422: the reward failed on the server) ends the call at once with the server's
message.

Images travel as 8-bit PNG, so the server scores the image quantised to 8 bits, as every saved image is.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import torch
from PIL import Image

from genrl.errors import GenrlError

RETRIED_STATUSES = frozenset({408, 429, 502, 503, 504})
"""Answers that say "not now" (stalled, busy, a proxy without its server): worth another try after a pause."""


def images_to_png(images: torch.Tensor) -> list[str]:
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    encoded = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


class RemoteReward:
    """``url`` may carry the client's settings: http://host:port?timeout=120&retries=3&backoff=0.5"""

    differentiable = False

    def __init__(self, url: str, timeout: float = 120.0, retries: int = 3, backoff: float = 0.5):
        parsed = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        try:
            self.timeout = float(query.pop("timeout", timeout))
            self.retries = max(1, int(query.pop("retries", retries)))
            self.backoff = float(query.pop("backoff", backoff))
        except ValueError as exc:
            raise GenrlError(
                f"reward server URL '{url}': {exc}; use ?timeout=SECONDS&retries=N&backoff=SECONDS"
            ) from exc
        if query:
            raise GenrlError(
                f"reward server URL '{url}': unknown settings {sorted(query)}; use timeout, retries, backoff"
            )
        self.url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))
        self.info = self._request("GET", "/info", None, timeout=min(self.timeout, 10.0))

    def _request(self, method: str, path: str, data: bytes | None, timeout: float) -> dict:
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(
                self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    body = response.read()
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code not in RETRIED_STATUSES:  # retrying would get the same answer
                    raise GenrlError(self._failure(exc.code, message)) from None
                last = f"server error {exc.code}: {message}"
            # No answer at all (refused, reset, cut short, timed out): the server may come back.
            except (OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                last = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else str(reason)
            else:
                return self._json(body)
        raise GenrlError(
            f"reward server {self.url} failed {self.retries} times ({last}); check that it runs: "
            "python -m genrl.rewards.serve --reward NAME --port PORT"
        )

    def _failure(self, status: int, message: str) -> str:
        if status == 422:  # the reward failed on the server; its message names the reward and the fix
            return f"reward server {self.url}: {message}"
        if status < 500:
            return f"reward server {self.url} refused the request ({status}): {message}"
        return f"reward server {self.url} failed ({status}): {message}; see the server's log"

    def _json(self, body: bytes) -> dict:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise GenrlError(
                f"reward server {self.url} answered {body[:100]!r}, not a JSON object; is it a genrl reward server?"
            )
        return answer

    def _check_limits(self, images: torch.Tensor, size: int | None = None) -> None:
        """Refuse here what the server would refuse: an answer to a body it does not read may never arrive."""
        limits = self.info.get("limits") or {}  # absent from older servers
        pixels = images.shape[-2] * images.shape[-1]
        checks = [
            ("max_image_pixels", pixels, 1, "pixels per image"),
            ("max_request_pixels", pixels * len(images), 1, "pixels per request"),
            ("max_request_mb", size, 1e6, "MB per request"),
        ]
        for name, value, unit, what in checks:
            cap = limits.get(name)
            if value is not None and isinstance(cap, (int, float)) and value > cap * unit:
                flag = "--" + name.replace("_", "-")
                raise GenrlError(
                    f"reward server {self.url} takes at most {cap} {what} ({flag}), this batch has {value / unit:g}; "
                    f"score smaller batches (--sample-batch-size) or restart the server with a larger {flag}"
                )

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        self._check_limits(images)
        payload = {"prompts": list(prompts), "metadata": list(metadata), "images": images_to_png(images)}
        try:
            data = json.dumps(payload).encode()
        except (TypeError, ValueError) as exc:  # the prompt set's metadata holds what JSON cannot carry
            raise GenrlError(
                f"reward server {self.url}: cannot send the metadata ({exc}); keep it to JSON values"
            ) from exc
        self._check_limits(images, len(data))
        answer = self._request("POST", "/score", data, timeout=self.timeout)
        rewards = answer.get("rewards")
        if not isinstance(rewards, list) or not all(_is_number(r) for r in rewards):
            raise GenrlError(f"reward server {self.url} answered without a list of 'rewards': {str(answer)[:200]}")
        return torch.tensor(rewards, dtype=torch.float32)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _error_message(error: urllib.error.HTTPError) -> str:
    """The server's ``{"error": ...}`` in one line, or the HTTP reason where the body is not ours."""
    try:
        body = error.read(65536)
        message = json.loads(body)["error"]
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
        message = error.reason
    lines = str(message).strip().splitlines()
    return lines[0][:500] if lines else f"HTTP {error.code}"

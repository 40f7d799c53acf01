"""A reward computed by a server (``python -m genrl.rewards.serve``): JSON over HTTP, images as PNG, no pickle.

    POST /score  {"prompts": [...], "metadata": [...], "images": ["<base64 PNG>", ...]}
                 -> 200 {"rewards": [...]}   or   4xx/5xx {"error": "..."}
    GET  /info   -> {"reward": NAME, "differentiable": false}

Images travel as 8-bit PNG, so the server scores the image quantised to 8 bits, as every saved image is.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
import torch
from PIL import Image

from genrl.errors import GenrlError


def images_to_png(images: torch.Tensor) -> list[str]:
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    encoded = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def png_to_images(encoded: list[str]) -> torch.Tensor:
    arrays = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB")) for s in encoded]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


class RemoteReward:
    differentiable = False

    """``url`` may carry the client's settings: http://host:port?timeout=120&retries=3&backoff=0.5"""

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

    def _request(self, method: str, path: str, payload: dict | None, timeout: float) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(
                self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                try:
                    message = json.loads(exc.read()).get("error", exc.reason)
                except (ValueError, AttributeError):
                    message = exc.reason
                if exc.code < 500:  # the request itself is wrong: retrying will not help
                    raise GenrlError(f"reward server {self.url} refused the request: {message}") from exc
                last = f"server error {exc.code}: {message}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else str(reason)
        raise GenrlError(
            f"reward server {self.url} failed {self.retries} times ({last}); check that it runs: "
            "python -m genrl.rewards.serve --reward NAME --port PORT"
        )

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        payload = {"prompts": list(prompts), "metadata": list(metadata), "images": images_to_png(images)}
        answer = self._request("POST", "/score", payload, timeout=self.timeout)
        if "rewards" not in answer:
            raise GenrlError(f"reward server {self.url} answered without 'rewards': {str(answer)[:200]}")
        return torch.tensor(answer["rewards"], dtype=torch.float32)

"""A reward computed by a server (``python -m genrl.rewards.serve``): JSON over HTTP, images as PNG, no pickle.

    POST /score  {"prompts": [...], "metadata": [...], "images": ["<base64 PNG>", ...]}
                 -> 200 {"rewards": [...]}   or   4xx/5xx {"error": "..."}
    GET  /info   -> {"reward": NAME, "differentiable": false, "limits": {...}}

``?timeout=`` bounds each attempt as a whole (connecting, sending and reading the full answer), not each socket
read: a server that answers one byte a second fails the attempt at the timeout like a silent one. Only what may
pass is retried: no answer (refused, reset, timed out) and 408, 429, 502, 503, 504. Any other error (a malformed
request, or 422: the reward failed on the server) ends the call at once with the server's message. A malformed
URL or setting (``?timeout=nan``, ``?retries=0``) is a one-line ``GenrlError`` when the reward is built.

Images travel as 8-bit PNG, so the server scores the image quantised to 8 bits, as every saved image is.
"""

from __future__ import annotations

import base64
import functools
import http.client
import io
import json
import math
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import torch

from genrl.errors import GenrlError
from genrl.images import pil_images

RETRIED_STATUSES = frozenset({408, 429, 502, 503, 504})
"""Answers that say "not now" (stalled, busy, a proxy without its server): worth another try after a pause."""

URL_FORM = "http://HOST:PORT?timeout=SECONDS&retries=N&backoff=SECONDS"


def images_to_png(images: torch.Tensor) -> list[str]:
    encoded = []
    for image in pil_images(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def seconds_left(deadline: float) -> float:
    """Time until ``deadline`` (``time.monotonic()``); ``TimeoutError`` once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


class DeadlineReader(io.RawIOBase):
    """A socket's reads, all ending by one ``deadline`` (``time.monotonic()``), for ``io.BufferedReader``.

    A socket's own timeout starts again with every read: a peer that sends a byte a second never reaches it."""

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__()
        # The socket's own file object, so that closing the socket waits for this reader as for any makefile().
        self._sock, self._raw, self.deadline = sock, sock.makefile("rb", buffering=0), deadline
        self.expired = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        try:
            self._sock.settimeout(seconds_left(self.deadline))
            return self._raw.readinto(buffer)
        except TimeoutError:
            self.expired = True
            raise

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """A connected socket whose sends and receives all end by ``deadline``; what http.client needs of a socket."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock, self._deadline = sock, deadline

    def sendall(self, data: Any) -> None:
        self._sock.settimeout(seconds_left(self._deadline))  # sendall's timeout bounds the whole call
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(DeadlineReader(self._sock, self._deadline))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineConnection:
    """Mixed into an http.client connection class: connecting, sending and the answer all end by ``deadline``."""

    def __init__(self, *args: Any, deadline: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def connect(self) -> None:
        self.timeout = seconds_left(self.deadline)
        super().connect()  # type: ignore[misc]
        self.sock = _DeadlineSocket(self.sock, self.deadline)


@functools.cache
def _with_deadline(http_class: type) -> type:
    return type(f"Deadline{http_class.__name__}", (_DeadlineConnection, http_class), {})


class _DeadlineHandler:
    """Mixed into urllib's HTTP(S) handlers: each request's connection ends by the request's ``deadline``."""

    def do_open(self, http_class: type, req: urllib.request.Request, **kwargs: Any) -> Any:
        # A redirect builds a new Request without our deadline: it gets a fresh timeout instead.
        deadline = getattr(req, "deadline", None) or time.monotonic() + req.timeout
        return super().do_open(_with_deadline(http_class), req, deadline=deadline, **kwargs)  # type: ignore[misc]


class _HTTPHandler(_DeadlineHandler, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_DeadlineHandler, urllib.request.HTTPSHandler):
    pass


def parse_url(url: str, defaults: dict[str, Any], form: str = URL_FORM) -> tuple[str, dict[str, Any]]:
    """The server's base URL and the client's settings (``defaults`` overridden by the query), each checked;
    ``form`` is how the messages say to write the URL."""
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 -- raises ValueError for a port that is not a number in 0..65535
    except ValueError as exc:
        raise GenrlError(f"reward server URL '{url}' is not a URL ({exc}); write it as {form}") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise GenrlError(f"reward server URL '{url}' names no http(s) host; write it as {form}")
    query = dict(urllib.parse.parse_qsl(parsed.query))
    unknown = sorted(set(query) - set(SETTINGS))
    if unknown:
        raise GenrlError(f"reward server URL '{url}': unknown settings {unknown}; use timeout, retries, backoff")
    settings = {name: _setting(url, name, query.get(name, default), form) for name, default in defaults.items()}
    base = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))
    return base, settings


SETTINGS: dict[str, tuple[type, Any, str]] = {
    # inf or nan would reach the socket layer (which raises on nan); retries=0 would never send the request.
    "timeout": (float, lambda v: math.isfinite(v) and v > 0, "a finite number of seconds > 0"),
    "retries": (int, lambda v: v >= 1, "a whole number of tries >= 1"),
    "backoff": (float, lambda v: math.isfinite(v) and v >= 0, "a finite number of seconds >= 0"),
}


def _setting(url: str, name: str, raw: Any, form: str = URL_FORM) -> Any:
    kind, valid, described = SETTINGS[name]
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or not valid(value):
        raise GenrlError(f"reward server URL '{url}': {name}={raw} must be {described}; write it as {form}")
    return value


class JsonClient:
    """JSON over HTTP with the reward client's rules: each attempt ends by one deadline ``timeout`` from its start;
    tries up to ``retries`` times, after ``backoff`` x 2^k seconds, where no answer came or the server said "not now"
    (``RETRIED_STATUSES``); any other error answer ends the call at once. Subclasses name the ``service`` and say
    what a non-JSON answer suggests (``json_hint``) and what to do once every try went unanswered (``_gave_up``)."""

    service = "server"
    json_hint = "is the URL right?"

    def __init__(self, url: str, timeout: float, retries: int, backoff: float, headers: dict[str, str] | None = None):
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._opener = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler)

    def _request(self, method: str, path: str, data: bytes | None, timeout: float) -> dict:
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._json(self._exchange(method, path, data, timeout))
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code not in RETRIED_STATUSES:  # retrying would get the same answer
                    raise GenrlError(self._failure(exc.code, message)) from None
                last = f"server error {exc.code}: {message}"
            # No answer at all (refused, reset, cut short, timed out): the server may come back.
            except (OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                timed_out = isinstance(reason, TimeoutError) or "timed out" in str(reason)
                last = f"timed out: no full answer within {timeout:g} s" if timed_out else str(reason)
        raise GenrlError(self._gave_up(last))

    def _gave_up(self, last: str) -> str:
        """The message once every try went unanswered (``last``: the last try's reason)."""
        raise NotImplementedError

    def _exchange(self, method: str, path: str, data: bytes | None, timeout: float) -> bytes:
        """The answer's body; connecting, sending and reading it all end by one deadline, ``timeout`` from now."""
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self.headers)
        request.deadline = time.monotonic() + timeout  # type: ignore[attr-defined]  # read by _DeadlineHandler
        with self._opener.open(request, timeout=timeout) as response:
            return response.read()

    def _failure(self, status: int, message: str) -> str:
        if status < 500:
            return f"{self.service} {self.url} refused the request ({status}): {message}"
        return f"{self.service} {self.url} failed ({status}): {message}; see the server's log"

    def _json(self, body: bytes) -> dict:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise GenrlError(f"{self.service} {self.url} answered {body[:100]!r}, not a JSON object; {self.json_hint}")
        return answer


class RemoteReward(JsonClient):
    """``url`` may carry the client's settings: http://host:port?timeout=120&retries=3&backoff=0.5"""

    differentiable = False
    service = "reward server"
    json_hint = "is it a genrl reward server?"

    def __init__(self, url: str, timeout: float = 120.0, retries: int = 3, backoff: float = 0.5):
        url, settings = parse_url(url, {"timeout": timeout, "retries": retries, "backoff": backoff})
        super().__init__(url, settings["timeout"], settings["retries"], settings["backoff"])
        self.info = self._request("GET", "/info", None, timeout=min(self.timeout, 10.0))

    def _gave_up(self, last: str) -> str:
        return (
            f"reward server {self.url} failed {self.retries} times ({last}); check that it runs: "
            "python -m genrl.rewards.serve --reward NAME --port PORT"
        )

    def _failure(self, status: int, message: str) -> str:
        if status == 422:  # the reward failed on the server; its message names the reward and the fix
            return f"reward server {self.url}: {message}"
        return super()._failure(status, message)

    def _check_limits(self, images: torch.Tensor, size: int | None = None) -> None:
        """Refuse here what the server would refuse: an answer to a body it does not read may never arrive."""
        limits = self.info.get("limits") or {}  # absent from older servers
        pixels = images.shape[-2] * images.shape[-1]
        checks = [
            ("max_items", len(images), 1, "images per request"),
            ("max_image_pixels", pixels, 1, "pixels per image"),
            ("max_request_pixels", pixels * len(images), 1, "pixels per request"),
            ("max_request_mb", size, 1e6, "MB per request"),
        ]
        for name, value, unit, what in checks:
            cap = limits.get(name)
            if value is not None and isinstance(cap, (int, float)) and value > cap * unit:
                flag = "--" + name.replace("_", "-")
                raise GenrlError(
                    f"reward server {self.url} takes at most {cap:g} {what} ({flag}), this batch has "
                    f"{value / unit:g}; score smaller batches (--sample-batch-size) or restart the server with a "
                    f"larger {flag}"
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
        body = json.loads(error.read(65536))
        message = body["error"] if "error" in body else body["message"]  # OpenAI-style servers: top-level too
        if isinstance(message, dict):  # the OpenAI API's {"error": {"message": ..., "type": ...}}
            message = message["message"]
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
        message = error.reason
    lines = str(message).strip().splitlines()
    return lines[0][:500] if lines else f"HTTP {error.code}"

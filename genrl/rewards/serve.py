"""``python -m genrl.rewards.serve --reward NAME --port P``: serve any reward over HTTP (see ``remote``).

Listens on 127.0.0.1 unless ``--host`` says otherwise. Requests are scored one at a time, in arrival order.

Every request is answered with JSON: 200 ``{"rewards": [...]}``, or ``{"error": "..."}`` with 400/408/411/413 for
a malformed, stalled or oversized request, 422 when the reward itself fails (retrying will not help) and 500 for a
bug in this server. Images are checked against the pixel caps from their PNG header, before any decoding.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import torch
import tyro
from PIL import Image

from genrl.errors import GenrlError
from genrl.rewards.base import CheckedReward
from genrl.rewards.registry import load_reward

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REQUEST_KEYS = ("prompts", "metadata", "images")


@dataclass
class ServeConfig:
    reward: str
    """Any --reward of genrl.train (a name, NAME(options), module:function or a composite)."""
    port: int = 8000
    host: str = "127.0.0.1"
    """Interface to listen on; the default answers this machine only."""
    max_request_mb: float = 256.0
    """Requests with a larger body are refused (413)."""
    max_image_pixels: int = 4096 * 4096
    """Images with more pixels (width x height, read from the PNG header before decoding) are refused (413)."""
    max_request_pixels: int = 8192 * 8192
    """Requests whose images hold more pixels in all are refused (413); bounds the memory one request decodes to."""
    read_timeout_s: float = 60.0
    """A client silent this long while sending its request is answered 408 and dropped, freeing its thread."""
    backlog: int = 1024
    """Connections that may wait to be accepted (the listen backlog; the kernel caps it at net.core.somaxconn)."""

    def __post_init__(self) -> None:
        for name in ("max_request_mb", "max_image_pixels", "max_request_pixels", "read_timeout_s", "backlog"):
            if not getattr(self, name) > 0:
                raise GenrlError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")


class Refused(Exception):
    """A request the server will not score: answered with ``status`` and ``message``, which names the fix.

    ``unread``: refused before its body was read, which the client may still be sending."""

    def __init__(self, status: int, message: str, unread: bool = False):
        super().__init__(message)
        self.status, self.message, self.unread = status, message, unread


def parse_request(body: bytes) -> tuple[list[str], list[dict[str, Any]], list[bytes]]:
    """Prompts, metadata and PNG bytes of a /score body, each checked for type and count."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise Refused(400, f"the body is not JSON ({str(exc)[:100]}); send a JSON object") from exc
    if not isinstance(request, dict):
        raise Refused(400, 'the body must be a JSON object {"prompts": [...], "metadata": [...], "images": [...]}')
    unknown = sorted(set(request) - set(REQUEST_KEYS))
    if unknown:
        raise Refused(400, f"unknown keys {unknown}; send only {list(REQUEST_KEYS)}")
    prompts = _list_of(request, "prompts", str, "strings")
    images = _list_of(request, "images", str, "base64 PNG strings")
    if not prompts:
        raise Refused(400, "no images; send at least one image with its prompt")
    if len(images) != len(prompts):
        raise Refused(400, f"{len(images)} images for {len(prompts)} prompts; send one prompt per image")
    if request.get("metadata") is None:
        metadata: list[dict[str, Any]] = [{} for _ in prompts]
    else:
        metadata = _list_of(request, "metadata", dict, "objects")
        if len(metadata) != len(prompts):
            raise Refused(400, f"{len(metadata)} metadata for {len(prompts)} prompts; send one object per image")
    return prompts, metadata, [_base64(s, i) for i, s in enumerate(images)]


def _list_of(request: dict, key: str, kind: type, described: str) -> list:
    # A string is iterable too: "prompts": "abc" must not become three prompts.
    value = request.get(key)
    if not isinstance(value, list):
        got = "nothing" if value is None else f"a {type(value).__name__}"
    elif not all(isinstance(x, kind) for x in value):
        got = f"a list holding a {type(next(x for x in value if not isinstance(x, kind))).__name__}"
    else:
        return value
    raise Refused(400, f"'{key}' must be a list of {described}, not {got}")


def _base64(text: str, index: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Refused(400, f"image {index} is not base64 ({exc}); send base64-encoded PNG") from exc


def png_size(data: bytes, index: int) -> tuple[int, int]:
    """(width, height) from the PNG header: the IHDR chunk is the first, at a fixed offset."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        raise Refused(400, f"image {index} is not a PNG; send base64-encoded PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def check_pixels(pngs: list[bytes], max_image_pixels: int, max_request_pixels: int) -> None:
    """Refuse oversized images before decoding: a 200 KB PNG can decode to gigabytes."""
    total = 0
    for index, data in enumerate(pngs):
        width, height = png_size(data, index)
        if width * height > max_image_pixels:
            raise Refused(
                413,
                f"image {index} is {width}x{height} = {width * height} pixels, over the server's "
                f"--max-image-pixels {max_image_pixels}; send smaller images or restart the server with a larger cap",
            )
        total += width * height
    if total > max_request_pixels:
        raise Refused(
            413,
            f"the request's {len(pngs)} images hold {total} pixels, over the server's --max-request-pixels "
            f"{max_request_pixels}; send fewer images per request or restart the server with a larger cap",
        )


def decode_pngs(pngs: list[bytes]) -> torch.Tensor:
    """The images as a float tensor (B, 3, H, W) in [0, 1]; call ``check_pixels`` first."""
    arrays = []
    for index, data in enumerate(pngs):
        try:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        # Untrusted bytes: PIL raises OSError, SyntaxError, ValueError, zlib.error, DecompressionBombError, ...
        except Exception as exc:
            raise Refused(400, f"image {index} is not a readable PNG ({type(exc).__name__}: {exc})") from exc
    shapes = sorted({a.shape[:2] for a in arrays})
    if len(shapes) > 1:
        raise Refused(400, f"images of different sizes {[f'{w}x{h}' for h, w in shapes]}; send images of one size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def make_server(reward: CheckedReward, cfg: ServeConfig) -> ThreadingHTTPServer:
    """A server of ``reward`` on ``cfg.host:cfg.port`` (port 0: any free port); run it with ``serve_forever``."""
    server = ThreadingHTTPServer((cfg.host, cfg.port), _handler(reward, cfg), bind_and_activate=False)
    server.daemon_threads = True  # a client stuck mid-request must not keep the process from exiting
    server.request_queue_size = cfg.backlog  # the default of 5 resets connections when many clients arrive at once
    try:
        server.server_bind()
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    return server


def _handler(reward: CheckedReward, cfg: ServeConfig) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()  # one reward call at a time: reward models are rarely thread-safe, and share a device
    limits = {name: getattr(cfg, name) for name in ("max_request_mb", "max_image_pixels", "max_request_pixels")}

    class Handler(BaseHTTPRequestHandler):
        timeout = cfg.read_timeout_s  # per socket operation; without it a short body blocks a thread forever

        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (closed or timed out) first: nobody to tell
                self.close_connection = True

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # http.server's own refusals (bad request line, unknown method, ...) in JSON like every other answer.
            self.close_connection = True
            self._answer(code, {"error": message or HTTPStatus(code).phrase})

        def do_GET(self) -> None:
            if self.path == "/info":  # the limits too, so that a client can refuse an oversized batch itself
                self._answer(200, {"reward": reward.name, "differentiable": False, "limits": limits})
            else:
                self._answer(404, {"error": f"no such path {self.path}; use GET /info or POST /score"})

        def do_POST(self) -> None:
            try:
                rewards = self._score()
            except Refused as exc:
                self.close_connection = True
                self._answer(exc.status, {"error": exc.message})
                if exc.unread:
                    self._discard_body()
            except GenrlError as exc:  # the reward failed on valid input: a retry would fail the same way
                self._answer(422, {"error": str(exc)})
            except Exception as exc:  # a bug here: log it, and still answer in JSON
                traceback.print_exc(file=sys.stderr)
                self._answer(500, {"error": f"reward server bug ({type(exc).__name__}: {exc}); see its log"})
            else:
                self._answer(200, {"rewards": rewards.tolist()})

        def _score(self) -> torch.Tensor:
            if self.path != "/score":
                raise Refused(404, f"no such path {self.path}; use POST /score", unread=True)
            prompts, metadata, pngs = parse_request(self._read_body())
            check_pixels(pngs, cfg.max_image_pixels, cfg.max_request_pixels)
            with lock:  # decoded here, so at most one request's pixels are in memory at a time
                return reward(decode_pngs(pngs), prompts, metadata)

        def _discard_body(self) -> None:
            # Closing a socket with unread data sends a reset, which can destroy the answer before the client
            # reads it: end our side, then read and drop what the client still sends, for a few seconds at most.
            try:
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(1.0)
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline and self.connection.recv(1 << 16):
                    pass
            except OSError:
                pass

        def _read_body(self) -> bytes:
            raw = self.headers.get("Content-Length")
            if raw is None:
                raise Refused(411, "no Content-Length header; send the body with its length (not chunked)", unread=True)
            try:
                length = int(raw)
            except ValueError:
                length = -1
            if length < 0:
                raise Refused(400, f"Content-Length {raw[:50]!r} is not a number of bytes", unread=True)
            if length > cfg.max_request_mb * 1e6:
                raise Refused(
                    413,
                    f"request of {length / 1e6:.1f} MB is over the server's --max-request-mb {cfg.max_request_mb}; "
                    "send fewer images per request or restart the server with a larger cap",
                    unread=True,
                )
            try:
                body = self.rfile.read(length)
            except TimeoutError as exc:
                raise Refused(
                    408,
                    f"the body stalled for {cfg.read_timeout_s} s (--read-timeout-s {cfg.read_timeout_s}) before all "
                    f"{length} bytes of its Content-Length arrived; send the whole body",
                ) from exc
            if len(body) < length:
                raise Refused(400, f"the body ended after {len(body)} of its Content-Length {length} bytes")
            return body

        def log_message(self, format: str, *args: Any) -> None:  # one quiet line per request on stderr
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return Handler


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = tyro.cli(ServeConfig, args=sys.argv[1:] if argv is None else argv, description=__doc__)
        reward = load_reward(cfg.reward)
    except GenrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        server = make_server(reward, cfg)
    except OSError as exc:
        print(f"error: cannot listen on {cfg.host}:{cfg.port} ({exc.strerror}); pick another --port", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"serving reward '{cfg.reward}' on http://{cfg.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

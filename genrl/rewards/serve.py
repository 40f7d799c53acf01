"""``python -m genrl.rewards.serve --reward NAME --port P``: serve any reward over HTTP (see ``remote``).

Listens on 127.0.0.1 unless ``--host`` says otherwise. Requests are scored one at a time, in arrival order.

Every request is answered with JSON: 200 ``{"rewards": [...]}``, or ``{"error": "..."}`` with 400/408/411/413/431
for a malformed, stalled or oversized request, 503 when the server is full (the client retries), 422 when the
reward itself fails (retrying will not help) and 500 for a bug in this server.

What one client can take is bounded, so that no client can exhaust the server's memory or threads:

- time: a request must arrive whole (request line, headers and body) within ``--read-timeout-s`` of its
  connection; one byte now and then does not extend it. A client still silent then gets 408.
- memory: a body is at most ``--max-request-mb``, by default what ``--max-items`` images of ``--max-request-pixels``
  in all take as base64 PNG even when they do not compress, and holds at most 128 JSON values per ``--max-items``
  (counted before parsing, so a body of ``[{},{},...]`` costs no more than its bytes). The bodies held at once
  (read, parsed or waiting their turn to be scored) add up to at most ``--max-pending-mb``: a body is read into
  one buffer of its Content-Length, taken from that budget before the first byte is read and given back only once
  the request and everything that held its body are gone; a request over it waits for room until its deadline,
  then gets 503. Images are checked against the pixel caps from their PNG header, before any decoding; a prompt
  is at most ``--max-prompt-chars``; the request line and headers take at most 64 KiB.
- threads: at most ``--max-connections`` connections are served at once; one more is answered 503 at once,
  without a thread.
"""

from __future__ import annotations

import base64
import binascii
import collections
import io
import json
import math
import mmap
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
from genrl.rewards.remote import DeadlineReader

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REQUEST_KEYS = ("prompts", "metadata", "images")

PNG_BYTES_PER_PIXEL = 4.01
"""The most an 8-bit RGB PNG takes per pixel, even of noise that does not compress: 3 bytes of colour, a filter
byte per row (at most one per pixel, for an image one pixel wide) and under 0.25% of deflate and chunk framing."""
PNG_BYTES_PER_IMAGE = 1024  # signature, IHDR and IEND chunks, with room to spare
TEXT_BYTES_PER_ITEM = 16 * 1024  # a prompt and its metadata, as JSON
MAX_PROMPT_CHARS = 4096
"""The default --max-prompt-chars: a prompt's characters. CLIP reads 77 tokens and T5 256 (about 1000 characters);
the rest of a longer prompt is never seen, and a request of one 100 MB prompt is no prompt at all."""
JSON_VALUES_PER_ITEM = 128
"""JSON values a request may hold per --max-items: its prompt, image and metadata, with room to spare. Parsing
takes up to ~70 bytes per value (an empty dict is 64), so this bounds what a body of ``{}`` can cost."""
HEAD_BYTES = 64 * 1024  # request line and headers; http.server alone would take 100 lines of 64 KiB each
LINGER_S = 1.0  # a refused connection stays open this long, so that our answer is read before the socket closes
MAX_LINGERING = 1024  # beyond this many, a turned-away connection is closed at once (the client sees a reset)


def default_request_bytes(max_request_pixels: int, max_items: int) -> int:
    """The largest body that ``max_items`` images of ``max_request_pixels`` in all, with prompts and metadata, need."""
    png = PNG_BYTES_PER_PIXEL * max_request_pixels + PNG_BYTES_PER_IMAGE * max_items
    return math.ceil(png * 4 / 3) + TEXT_BYTES_PER_ITEM * max_items  # base64: 4 characters per 3 bytes


@dataclass
class ServeConfig:
    reward: str
    """Any --reward of genrl.train (a name, NAME(options), module:function or a composite)."""
    port: int = 8000
    """TCP port, 0..65535 (0: any free port)."""
    host: str = "127.0.0.1"
    """Interface to listen on; the default answers this machine only."""
    max_image_pixels: int = 4096 * 4096
    """Images with more pixels (width x height, read from the PNG header before decoding) are refused (413)."""
    max_request_pixels: int = 4096 * 4096
    """Requests whose images hold more pixels in all are refused (413); bounds the memory one request decodes to
    (12 bytes a pixel as float32 RGB: 200 MB at the default)."""
    max_items: int = 1024
    """Requests with more images (prompts) are refused (413)."""
    max_prompt_chars: int = MAX_PROMPT_CHARS
    """Requests with a longer prompt (in characters) are refused (413)."""
    max_request_mb: float | None = None
    """Requests with a larger body are refused (413) before it is read. Default: what --max-items incompressible
    8-bit RGB PNGs of --max-request-pixels in all take as base64, plus 16 KiB of prompt and metadata per item
    (108 MB for the default caps)."""
    max_pending_mb: float | None = None
    """Bodies held at once (being read, parsed or waiting to be scored) add up to at most this: a body takes its
    Content-Length from it before it is read, and gives it back once it is gone. A request over it waits for room
    until its --read-timeout-s deadline, then is answered 503 (the client retries). Parsing holds about 3x a body,
    so this bounds the server's memory for requests. Default: 4 x --max-request-mb."""
    max_connections: int = 64
    """Connections served at once, each by a thread; one more is answered 503 at once, without a thread."""
    read_timeout_s: float = 60.0
    """Deadline for a whole request to arrive (request line, headers and body), counted from its connection, not
    per read: a client still sending then is answered 408 and dropped, freeing its thread and memory."""
    backlog: int = 1024
    """Connections that may wait to be accepted (the listen backlog; the kernel caps it at net.core.somaxconn)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise GenrlError(f"--port must be 0..65535 (0: any free port), not {self.port}")
        positive = ("max_image_pixels", "max_request_pixels", "max_items", "max_prompt_chars", "max_connections")
        for name in (*positive, "backlog"):
            if not getattr(self, name) > 0:
                raise GenrlError(f"--{_flag(name)} must be positive, not {getattr(self, name)}")
        for name in ("read_timeout_s", "max_request_mb", "max_pending_mb"):
            value = getattr(self, name)
            # inf would pass a "> 0" check, then crash every handler when it reaches the socket layer.
            if value is not None and not (math.isfinite(value) and value > 0):
                raise GenrlError(f"--{_flag(name)} must be a finite positive number, not {value}")
        if self.max_pending_bytes < self.max_request_bytes:
            raise GenrlError(
                f"--max-pending-mb {self.max_pending_bytes / 1e6:g} is under --max-request-mb "
                f"{self.max_request_bytes / 1e6:g}: the largest request could never be read; raise --max-pending-mb"
            )

    @property
    def max_request_bytes(self) -> int:
        if self.max_request_mb is None:
            return default_request_bytes(self.max_request_pixels, self.max_items)
        return int(self.max_request_mb * 1e6)

    @property
    def max_pending_bytes(self) -> int:
        return 4 * self.max_request_bytes if self.max_pending_mb is None else int(self.max_pending_mb * 1e6)


def _flag(name: str) -> str:
    return name.replace("_", "-")


class Refused(Exception):
    """A request the server will not score: answered with ``status`` and ``message``, which names the fix.

    ``unread``: refused before its body was read, which the client may still be sending."""

    def __init__(self, status: int, message: str, unread: bool = False):
        super().__init__(message)
        self.status, self.message, self.unread = status, message, unread


def parse_request(
    body: str | bytes | bytearray, max_items: int, max_prompt_chars: int = MAX_PROMPT_CHARS
) -> tuple[list[str], list[dict[str, Any]], list[bytes]]:
    """Prompts, metadata and PNG bytes of a /score body (its text, or its bytes), each checked for type, count and
    (prompts) length."""
    _check_json_values(body, max_items)
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
    if len(prompts) > max_items:
        raise Refused(
            413,
            f"{len(prompts)} images, over the server's --max-items {max_items}; send fewer images per request or "
            "restart the server with a larger cap",
        )
    if len(images) != len(prompts):
        raise Refused(400, f"{len(images)} images for {len(prompts)} prompts; send one prompt per image")
    long = next((i for i, prompt in enumerate(prompts) if len(prompt) > max_prompt_chars), None)
    if long is not None:
        raise Refused(
            413,
            f"prompt {long} is {len(prompts[long])} characters, over the server's --max-prompt-chars "
            f"{max_prompt_chars}; send shorter prompts or restart the server with a larger cap",
        )
    if request.get("metadata") is None:
        metadata: list[dict[str, Any]] = [{} for _ in prompts]
    else:
        metadata = _list_of(request, "metadata", dict, "objects")
        if len(metadata) != len(prompts):
            raise Refused(400, f"{len(metadata)} metadata for {len(prompts)} prompts; send one object per image")
    return prompts, metadata, [_base64(s, i) for i, s in enumerate(images)]


def _check_json_values(body: str | bytes | bytearray, max_items: int) -> None:
    # Parsing costs up to 24x a body's bytes (3 bytes "{}," become a 64-byte dict and its 8-byte slot), while a
    # real request is nearly all base64. Every value but a container's first follows a comma, so commas and
    # opening brackets bound the values (an overcount, as they may sit in strings) at C speed, before parsing.
    marks = ",[{" if isinstance(body, str) else (b",", b"[", b"{")
    values = sum(body.count(mark) for mark in marks) + 1
    limit = JSON_VALUES_PER_ITEM * max_items
    if values > limit:
        raise Refused(
            413,
            f"the body holds up to {values} JSON values (counted from its commas and brackets), over the server's "
            f"{limit} ({JSON_VALUES_PER_ITEM} per --max-items {max_items}); send less metadata per request or "
            "restart the server with a larger --max-items",
        )


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


class Budget:
    """Bytes that request bodies may hold at once. A request waits for room rather than being refused at once:
    a waiting request holds a thread (bounded by --max-connections) but no memory, as its body is not read yet."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self._changed = threading.Condition()

    def take(self, size: int, deadline: float) -> bool:
        """Reserve ``size`` bytes, waiting until ``deadline`` (``time.monotonic()``) at most; False if no room came
        before it."""
        with self._changed:
            fits = lambda: self.used + size <= self.total
            # wait_for says True for room that came with the deadline past: a request that has no time left to
            # arrive would take room (and a buffer) from one that has.
            room = self._changed.wait_for(fits, timeout=max(0.0, deadline - time.monotonic()))
            if not room or time.monotonic() >= deadline:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        with self._changed:
            self.used -= size
            self._changed.notify_all()


class HeadTooLarge(Exception):
    """The request line and headers went past HEAD_BYTES."""


class _RequestReader(DeadlineReader):
    """A request's reads: all by its deadline, and its request line and headers within HEAD_BYTES."""

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__(sock, deadline)
        self.head_room: int | None = HEAD_BYTES  # None once the headers are in: the body has caps of its own

    def readinto(self, buffer: Any) -> int | None:
        if self.head_room is None:
            return super().readinto(buffer)
        if self.head_room <= 0:
            raise HeadTooLarge
        count = super().readinto(memoryview(buffer)[: self.head_room])
        self.head_room -= count or 0
        return count


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, for at most ``max_connections`` at once; any more are answered 503 without one."""

    daemon_threads = True  # a client stuck mid-request must not keep the process from exiting

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], cfg: ServeConfig):
        super().__init__(address, handler, bind_and_activate=False)
        self.request_queue_size = cfg.backlog  # the default of 5 resets connections when many clients arrive at once
        self._slots = threading.BoundedSemaphore(cfg.max_connections)
        self._lingering: collections.deque[tuple[float, socket.socket]] = collections.deque()
        busy = f"the server is serving its --max-connections {cfg.max_connections} connections; retry shortly"
        self._busy_answer = raw_answer(503, {"error": busy})

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._turn_away(request)
            return
        try:
            threading.Thread(target=self._serve, args=(request, client_address), daemon=True).start()
        except RuntimeError:  # the OS has no thread to give
            self._slots.release()
            self._turn_away(request)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _turn_away(self, request: socket.socket) -> None:
        # From the accepting thread, so it must not block: a fresh connection's send buffer takes the short answer.
        try:
            request.setblocking(False)
            request.send(self._busy_answer)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        # Closed later (service_actions): closing now, with the request unread, would send a reset that can
        # destroy the answer before the client reads it.
        if len(self._lingering) < MAX_LINGERING:
            self._lingering.append((time.monotonic() + LINGER_S, request))
        else:
            _close(request)

    def service_actions(self) -> None:  # called by serve_forever at least every poll interval
        super().service_actions()
        while self._lingering and self._lingering[0][0] <= time.monotonic():
            _close(self._lingering.popleft()[1])

    def server_close(self) -> None:
        super().server_close()
        while self._lingering:
            _close(self._lingering.popleft()[1])


def raw_answer(status: int, body: dict) -> bytes:
    """A whole HTTP answer, for where no handler runs."""
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.0 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def _close(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 16):  # what has arrived, so that closing sends no reset (non-blocking: stops at once)
            pass
    except OSError:
        pass
    sock.close()


def _linger(sock: socket.socket, seconds: float) -> None:
    """End our side, then read and drop what the client still sends, for ``seconds`` at most."""
    # Closing a socket with unread data sends a reset, which can destroy the answer before the client reads it.
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if time.monotonic() >= deadline or not sock.recv(1 << 16):
                return
    except OSError:
        pass


def make_server(reward: CheckedReward, cfg: ServeConfig) -> ThreadingHTTPServer:
    """A server of ``reward`` on ``cfg.host:cfg.port`` (port 0: any free port); run it with ``serve_forever``."""
    server = BoundedServer((cfg.host, cfg.port), _handler(reward, cfg), cfg)
    try:
        server.server_bind()
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    return server


def _handler(reward: CheckedReward, cfg: ServeConfig) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()  # one reward call at a time: reward models are rarely thread-safe, and share a device
    budget = Budget(cfg.max_pending_bytes)
    limits = {
        "max_items": cfg.max_items,
        "max_prompt_chars": cfg.max_prompt_chars,
        "max_image_pixels": cfg.max_image_pixels,
        "max_request_pixels": cfg.max_request_pixels,
        "max_request_mb": cfg.max_request_bytes / 1e6,
    }

    class Handler(BaseHTTPRequestHandler):
        def setup(self) -> None:
            super().setup()
            # One deadline for the whole request, from its connection: a per-read timeout restarts with every byte.
            self._reader = _RequestReader(self.connection, time.monotonic() + cfg.read_timeout_s)
            self.rfile.close()
            self.rfile = io.BufferedReader(self._reader)
            self._answered = False
            self.requestline, self.request_version, self.command = "", "HTTP/1.0", ""  # until a request line comes

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()  # on a timeout in the head, it closes without a word: we answer below
            except HeadTooLarge:
                self._refuse_head(431, f"the request line and headers are over {HEAD_BYTES} bytes; send fewer")
            if self._reader.expired and not self._answered:
                self._refuse_head(
                    408,
                    f"the request line and headers did not arrive within --read-timeout-s {cfg.read_timeout_s}; "
                    "send the whole request at once",
                )

        def _refuse_head(self, code: int, message: str) -> None:
            self.close_connection = True
            self._answer(code, {"error": message})
            _linger(self.connection, LINGER_S)  # the client may still be sending its head

        def _answer(self, code: int, body: dict) -> None:
            self._answered = True
            data = json.dumps(body).encode()
            try:
                self.connection.settimeout(cfg.read_timeout_s)  # sendall's timeout bounds the whole answer
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
            self._reader.head_room = None
            self._held = 0  # bytes of the budget this request holds
            try:
                code, answer, unread = self._outcome()
            finally:
                # Only now, with the body gone: the traceback of a refusal (a 408 mid-body, say) holds the frames
                # that held the body, and those live until _outcome has handled it. Given back before, a stalled
                # body's room went to the next one while it stayed in memory for the linger below.
                budget.give(self._held)
            self._answer(code, answer)
            if unread:
                _linger(self.connection, 3.0)

        def _outcome(self) -> tuple[int, dict, bool]:
            """The answer: its status and JSON, and whether the client may still be sending a body we did not read.
            Every exception ends here, and its traceback with it."""
            try:
                return 200, {"rewards": self._score().tolist()}, False
            except Refused as exc:
                self.close_connection = True
                return exc.status, {"error": exc.message}, exc.unread
            except GenrlError as exc:  # the reward failed on valid input: a retry would fail the same way
                return 422, {"error": str(exc)}, False
            except Exception as exc:  # a bug here: log it, and still answer in JSON
                traceback.print_exc(file=sys.stderr)
                return 500, {"error": f"reward server bug ({type(exc).__name__}: {exc}); see its log"}, False

        def _score(self) -> torch.Tensor:
            if self.path != "/score":
                raise Refused(404, f"no such path {self.path}; use POST /score", unread=True)
            length = self._content_length()
            if not budget.take(length, self._reader.deadline):
                raise Refused(
                    503,
                    f"the server holds its --max-pending-mb {cfg.max_pending_bytes / 1e6:g} of requests; retry shortly",
                    unread=True,
                )
            # Held until the answer (do_POST gives it back): a parsed request waiting for the lock holds memory too.
            self._held = length
            prompts, metadata, pngs = parse_request(self._read_text(length), cfg.max_items, cfg.max_prompt_chars)
            check_pixels(pngs, cfg.max_image_pixels, cfg.max_request_pixels)
            with lock:  # decoded here, so at most one request's pixels are in memory at a time
                return reward(decode_pngs(pngs), prompts, metadata)

        def _content_length(self) -> int:
            raw = self.headers.get("Content-Length")
            if raw is None:
                raise Refused(411, "no Content-Length header; send the body with its length (not chunked)", unread=True)
            try:
                length = int(raw)
            except ValueError:
                length = -1
            if length < 0:
                raise Refused(400, f"Content-Length {raw[:50]!r} is not a number of bytes", unread=True)
            if length > cfg.max_request_bytes:
                raise Refused(
                    413,
                    f"request of {length / 1e6:.1f} MB is over the server's --max-request-mb "
                    f"{cfg.max_request_bytes / 1e6:g}; send fewer images per request or restart the server with a "
                    "larger cap",
                    unread=True,
                )
            return length

        def _read_text(self, length: int) -> str:
            """The body, as the text that JSON parses."""
            # Read in place into one anonymous mapping of the room taken for it (its Content-Length): its pages are
            # the bytes that came, and all of them go back to the OS once it is freed, as this returns. A bytearray
            # grown chunk by chunk took up to an eighth more than its room, with a 1 MB chunk beside it, and
            # malloc keeps large freed blocks in the thread's arena: 30 clients stalled mid-body (20 MB each) left a
            # server 289 MB up against a --max-pending-mb of 44 (an exact bytearray: 177 MB; this: 41 MB).
            body, got = mmap.mmap(-1, max(length, 1)), 0  # a mapping of 0 bytes is an error
            try:
                with memoryview(body) as view:
                    while got < length:
                        count = self.rfile.readinto1(view[got:length])
                        if not count:
                            raise Refused(400, f"the body ended after {got} of its Content-Length {length} bytes")
                        got += count
                    return str(view[:length], "utf-8", "surrogatepass")  # as json.loads decodes UTF-8 bytes
            except TimeoutError as exc:
                raise Refused(
                    408,
                    f"the request did not arrive within --read-timeout-s {cfg.read_timeout_s} ({got} of its "
                    f"{length} body bytes came); send the whole request at once",
                    unread=True,
                ) from exc
            except UnicodeDecodeError as exc:
                raise Refused(
                    400, f"the body is not UTF-8 ({exc.reason} at byte {exc.start}); send JSON in UTF-8"
                ) from None
            finally:
                body.close()  # its pages go back now, whatever still refers to this frame

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

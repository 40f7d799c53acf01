"""The reward server and its client: a real HTTP server on 127.0.0.1, trained against, failing and stalling."""

import base64
import contextlib
import http.client
import io
import json
import math
import os
import select
import socket
import struct
import threading
import time
import tracemalloc
import urllib.parse
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from genrl.errors import GenrlError
from genrl.rewards import load_reward
from genrl.rewards.base import CheckedReward
from genrl.rewards.remote import RemoteReward, images_to_png
from genrl.rewards.serve import Refused, ServeConfig, default_request_bytes, make_server, parse_request
from genrl.rewards.serve import main as serve_main
from genrl.train import main
from tests.helpers import fast_args

# serve_forever's poll interval, which shutdown() waits out: 0.5 s by default, for each of some 70 servers.
POLL_S = 0.02


@pytest.fixture
def serve():
    servers = []

    def start(reward, **settings):
        checked = reward if isinstance(reward, CheckedReward) else CheckedReward(reward, "test")
        server = make_server(checked, ServeConfig("test", host="127.0.0.1", port=0, **settings))
        threading.Thread(target=server.serve_forever, args=(POLL_S,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_remote_reward_equals_the_local_one(serve):
    url = serve(load_reward("jpeg_incompressibility"))
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    remote, local = load_reward(url), load_reward("jpeg_incompressibility")
    torch.testing.assert_close(remote(images, ["a"] * 4, [{}] * 4), local(images, ["a"] * 4, [{}] * 4))


@pytest.mark.slow
def test_training_against_a_server_gives_the_same_run(serve, tmp_path):
    url = serve(load_reward("jpeg_compressibility"))
    main(fast_args(tmp_path, "remote", "--reward", url))
    main(fast_args(tmp_path, "local", "--reward", "jpeg_compressibility"))
    read = lambda name: [
        json.loads(x)["reward_mean"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    ]
    assert read("remote") == read("local")


def test_a_failing_reward_reaches_the_client_as_one_line_without_retries(serve):
    calls = []

    def broken(images, prompts, metadata):
        calls.append(len(prompts))
        raise RuntimeError("out of memory")

    url = serve(broken)
    reward = load_reward(url + "?retries=3&backoff=0.01")
    with pytest.raises(GenrlError) as info:
        reward(torch.rand(2, 3, 8, 8), ["a", "b"], [{}, {}])
    assert (
        str(info.value)
        == f"reward server {url}: reward 'test' raised RuntimeError: out of memory; fix the reward function"
    )
    assert calls == [2]  # the same images would fail the same way: not sent again
    status, answer = post(url, score_body(1))
    assert status == 422 and "raised RuntimeError: out of memory" in answer["error"]


def test_a_stalled_server_times_out(serve):
    def slow(images, prompts, metadata):
        time.sleep(3)
        return [0.0] * len(prompts)

    url = serve(slow)
    reward = load_reward(url + "?timeout=0.3&retries=2&backoff=0.01")
    start = time.perf_counter()
    with pytest.raises(GenrlError, match="failed 2 times \\(timed out: no full answer within 0.3 s\\)"):
        reward(torch.rand(1, 3, 8, 8), ["a"], [{}])
    assert time.perf_counter() - start < 3


def test_an_unreachable_server_stops_training_before_it_starts(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SystemExit) as info:
        main(fast_args(tmp_path, "r", "--reward", f"http://127.0.0.1:{port}?retries=2&backoff=0.01"))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: reward server") and "python -m genrl.rewards.serve" in err
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()


def test_bad_settings_in_the_url():
    with pytest.raises(GenrlError, match="unknown settings \\['speed'\\]"):
        load_reward("http://127.0.0.1:1?speed=3")


def test_training_against_a_failing_server_ends_in_one_line(serve, tmp_path, capsys):
    def broken(images, prompts, metadata):
        raise RuntimeError("CUDA error: device-side assert")

    url = serve(broken) + "?retries=2&backoff=0.01"
    with pytest.raises(SystemExit) as info:
        main(fast_args(tmp_path, "r", "--reward", url, "--async-rewards"))
    assert info.value.code == 2
    err = capsys.readouterr().err  # the in-process server logs its requests there too
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: reward server") and "raised RuntimeError: CUDA error" in line
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints" / "latest").exists()


# Raw HTTP: the requests a well-behaved client never sends.


def png(width: int, height: int, colour: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height but carries no pixels: what a decompression bomb starts with."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def score_body(n: int = 1, image: bytes | None = None, **fields) -> bytes:
    encoded = base64.b64encode(image or png(8, 8)).decode()
    request = {"prompts": ["a"] * n, "metadata": [{}] * n, "images": [encoded] * n, **fields}
    return json.dumps(request).encode()


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    address = urllib.parse.urlsplit(url)
    return socket.create_connection((address.hostname, address.port), timeout=timeout)


def read_answer(sock: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of the answer on ``sock`` (the server closes after each request)."""
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head, "the server closed the connection without an answer"
    return int(head.split()[1]), json.loads(body)


def raw(url: str, data: bytes, timeout: float = 10.0) -> tuple[int, dict]:
    """Send ``data`` as it is; the status and JSON body of the answer."""
    with connect(url, timeout) as sock:
        sock.sendall(data)
        return read_answer(sock)


def drip(url: str, head: bytes, every: float = 0.1, give_up_s: float = 3.0) -> tuple[int, dict]:
    """Send ``head``, then one more byte every ``every`` s until the server answers (or ``give_up_s`` passes)."""
    with connect(url) as sock:
        sock.sendall(head)
        end = time.monotonic() + give_up_s
        while time.monotonic() < end and not select.select([sock], [], [], every)[0]:
            sock.send(b"x")
        return read_answer(sock)


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    head = {"Content-Length": str(len(body)), **(headers or {})}
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items() if v is not None)
    return raw(url, f"POST /score HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode() + body)


def zeros(images, prompts, metadata):
    return torch.zeros(len(prompts))


def test_a_huge_png_is_refused_from_its_header(serve):
    url = serve(zeros)
    for width, height in [(9000, 9000), (20000, 20000)]:  # 9000^2 decoded to 3 GB; 20000^2 dropped the connection
        start = time.perf_counter()
        status, answer = post(url, score_body(1, png_header(width, height)))
        assert status == 413, answer
        assert (
            answer["error"].startswith(f"image 0 is {width}x{height}")
            and "--max-image-pixels 16777216" in answer["error"]
        )
        assert time.perf_counter() - start < 5  # refused before decoding (which took 3 GB)


def test_the_pixel_caps_per_image_and_per_request(serve):
    url = serve(zeros, max_image_pixels=32 * 32, max_request_pixels=3 * 32 * 32)
    assert post(url, score_body(3, png(32, 32))) == (200, {"rewards": [0.0, 0.0, 0.0]})
    status, answer = post(url, score_body(1, png(33, 32)))
    assert status == 413 and "over the server's --max-image-pixels 1024" in answer["error"]
    status, answer = post(url, score_body(4, png(32, 32)))
    assert status == 413 and "4 images hold 4096 pixels, over the server's --max-request-pixels 3072" in answer["error"]
    # The client knows the caps from /info, and refuses an oversized batch itself, in one line.
    with pytest.raises(GenrlError, match="takes at most 3072 pixels per request \\(--max-request-pixels\\)"):
        RemoteReward(url)(torch.rand(4, 3, 32, 32), ["a"] * 4, [{}] * 4)


B64 = base64.b64encode(png(8, 8)).decode()


@pytest.mark.parametrize(
    "body,headers,status,message",
    [
        (score_body(), {"Content-Length": "abc"}, 400, "Content-Length 'abc' is not a number of bytes"),
        (score_body(), {"Content-Length": "-5"}, 400, "Content-Length '-5' is not a number of bytes"),
        (score_body(), {"Content-Length": None}, 411, "no Content-Length header"),
        (score_body(), {"Content-Length": str(10**12)}, 413, "over the server's --max-request-mb 107.877"),
        (b"{not json", {}, 400, "the body is not JSON"),
        (b"[1, 2]", {}, 400, "the body must be a JSON object"),
        (b'{"prompts": ["\xff"]}', {}, 400, "the body is not UTF-8 (invalid start byte at byte 14); send JSON"),
        (b"[" * 100000, {}, 400, "the body is not JSON"),
        (b"[" + b"{}," * 200_000 + b"{}]", {}, 413, "JSON values (counted from its commas and brackets)"),
        (score_body(1025), {}, 413, "1025 images, over the server's --max-items 1024"),
        (score_body(prompts="abc", images=[B64] * 3), {}, 400, "'prompts' must be a list of strings, not a str"),
        (score_body(prompts=[1]), {}, 400, "'prompts' must be a list of strings, not a list holding a int"),
        (score_body(images=B64), {}, 400, "'images' must be a list of base64 PNG strings, not a str"),
        (score_body(images=None), {}, 400, "'images' must be a list of base64 PNG strings, not nothing"),
        (score_body(2, images=[B64]), {}, 400, "1 images for 2 prompts; send one prompt per image"),
        (score_body(0), {}, 400, "no images; send at least one image"),
        (score_body(2, metadata=[{}]), {}, 400, "1 metadata for 2 prompts"),
        (score_body(1, metadata=["x"]), {}, 400, "'metadata' must be a list of objects, not a list holding a str"),
        (score_body(1, metadata={}), {}, 400, "'metadata' must be a list of objects, not a dict"),
        (score_body(1, metdata=[{}]), {}, 400, "unknown keys ['metdata']"),
        (
            score_body(2, prompts=["a", "é" * 4097]),
            {},
            413,
            "prompt 1 is 4097 characters, over the server's --max-prompt-chars 4096; send shorter prompts",
        ),
        (score_body(images=["not base64!"]), {}, 400, "image 0 is not base64"),
        (score_body(images=[base64.b64encode(b"GIF89a...").decode()]), {}, 400, "image 0 is not a PNG"),
        (score_body(1, png_header(8, 8)), {}, 400, "image 0 is not a readable PNG"),
        (score_body(2, images=[B64, base64.b64encode(png(9, 8)).decode()]), {}, 400, "images of different sizes"),
    ],
)
def test_every_malformed_request_gets_a_json_error(serve, body, headers, status, message):
    url = serve(zeros)
    got, answer = post(url, body, headers)
    assert (got, set(answer)) == (status, {"error"}), answer
    assert message in answer["error"], answer["error"]


def test_other_refusals_are_json_too(serve):
    url = serve(zeros)
    assert raw(url, b"PUT /score HTTP/1.0\r\n\r\n") == (501, {"error": "Unsupported method ('PUT')"})
    assert raw(url, b"GET /nothing HTTP/1.0\r\n\r\n")[0] == 404
    body = score_body()
    request = f"POST /scores HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    assert raw(url, request) == (404, {"error": "no such path /scores; use POST /score"})


def test_a_body_shorter_than_its_length_times_out_with_408(serve):
    url = serve(zeros, read_timeout_s=0.3)
    start = time.perf_counter()
    status, answer = raw(url, b"POST /score HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + score_body())
    assert status == 408 and "--read-timeout-s 0.3" in answer["error"]
    assert time.perf_counter() - start < 3
    assert post(url, score_body()) == (200, {"rewards": [0.0]})  # the server is still there


def brightness(images, prompts, metadata):
    return images.mean(dim=(1, 2, 3))


def test_fifty_clients_at_once_are_all_answered_beside_hostile_ones(serve):
    url = serve(brightness, read_timeout_s=1.0)
    port = urllib.parse.urlsplit(url).port
    barrier, answers = threading.Barrier(50), {}

    def client(grey: int):
        body = score_body(1, png(8, 8, (grey,) * 3))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            barrier.wait(timeout=30)
            connection.request("POST", "/score", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answers[grey] = (response.status, json.loads(response.read()))
        except OSError as exc:
            answers[grey] = type(exc).__name__
        finally:
            connection.close()

    hostile = {
        "drip": lambda: drip(url, b"POST /score HTTP/1.1\r\nContent-Length: 1000\r\n\r\n"),
        "silent": lambda: raw(url, b""),
        "json bomb": lambda: post(url, b"[" + b"{}," * 500_000 + b"{}]"),
        "huge length": lambda: post(url, score_body(), {"Content-Length": str(10**12)}),
    }
    hostile_answers = {}
    threads = [threading.Thread(target=lambda k=k: hostile_answers.update({k: hostile[k]()})) for k in hostile]
    threads += [threading.Thread(target=client, args=(grey,)) for grey in range(0, 250, 5)]
    for thread in threads:
        thread.daemon = True
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert answers == {grey: (200, {"rewards": [pytest.approx(grey / 255)]}) for grey in range(0, 250, 5)}
    statuses = {name: answer[0] for name, answer in hostile_answers.items()}
    assert statuses == {"drip": 408, "silent": 408, "json bomb": 413, "huge length": 413}


class _Flaky(BaseHTTPRequestHandler):
    """Answers /info, then /score with ``codes`` in turn (the last one for good)."""

    codes: list[int] = []
    seen: list[int] = []

    def do_GET(self):
        self._send(200, {"reward": "flaky", "differentiable": False})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        code = self.codes[min(len(self.seen), len(self.codes) - 1)]
        self.seen.append(code)
        self._send(code, {"rewards": [1.0]} if code == 200 else {"error": f"status {code}\nsecond line"})

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    "codes,outcome",
    [
        ([503, 502, 200], 3),  # busy, then a proxy without its server, then the answer: retried
        ([503], "failed 3 times (server error 503: status 503)"),
        ([400, 200], "refused the request (400): status 400"),  # a wrong request: not retried
        ([500, 200], "failed (500): status 500; see the server's log"),
        ([404, 200], "refused the request (404): status 404"),
    ],
)
def test_the_client_retries_only_what_may_pass(codes, outcome):
    handler = type("Handler", (_Flaky,), {"codes": codes, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(POLL_S,), daemon=True).start()
    try:
        reward = RemoteReward(f"http://127.0.0.1:{server.server_address[1]}?retries=3&backoff=0.01&timeout=10")
        if isinstance(outcome, int):
            assert reward(torch.rand(1, 3, 8, 8), ["a"], [{}]).tolist() == [1.0]
            assert len(handler.seen) == outcome
        else:
            with pytest.raises(GenrlError) as info:
                reward(torch.rand(1, 3, 8, 8), ["a"], [{}])
            assert outcome in str(info.value) and "\n" not in str(info.value)
            assert len(handler.seen) == (3 if "failed 3 times" in outcome else 1)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "args,line",
    [
        (["--max-image-pixels", "0"], "--max-image-pixels must be positive, not 0"),
        (["--port", "99999"], "--port must be 0..65535 (0: any free port), not 99999"),
        (["--port", "-1"], "--port must be 0..65535 (0: any free port), not -1"),
        (["--read-timeout-s", "inf"], "--read-timeout-s must be a finite positive number, not inf"),
    ],
)
def test_bad_server_settings_stop_in_one_line(capsys, args, line):
    # A reward that does not exist: settings are checked before it is loaded (and a server that took the
    # settings stops there, rather than serving).
    with pytest.raises(SystemExit) as info:
        serve_main(["--reward", "no_such_reward", *args])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {line}"


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"read_timeout_s": math.inf}, "--read-timeout-s must be a finite positive number, not inf"),
        ({"read_timeout_s": math.nan}, "--read-timeout-s must be a finite positive number, not nan"),
        ({"read_timeout_s": 0.0}, "--read-timeout-s must be a finite positive number, not 0.0"),
        ({"read_timeout_s": -1.0}, "--read-timeout-s must be a finite positive number, not -1.0"),
        ({"max_request_mb": math.inf}, "--max-request-mb must be a finite positive number, not inf"),
        ({"max_pending_mb": 0.0}, "--max-pending-mb must be a finite positive number, not 0.0"),
        ({"max_connections": 0}, "--max-connections must be positive, not 0"),
        ({"max_items": -1}, "--max-items must be positive, not -1"),
        ({"port": 65536}, "--port must be 0..65535 (0: any free port), not 65536"),
        ({"max_request_mb": 2.0, "max_pending_mb": 1.0}, "--max-pending-mb 1 is under --max-request-mb 2"),
    ],
)
def test_server_settings_are_checked(settings, message):
    with pytest.raises(GenrlError) as info:
        ServeConfig("zeros", **settings)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    "url,message",
    [
        ("http://[::1", "is not a URL (Invalid IPv6 URL)"),
        ("http://127.0.0.1:99999", "is not a URL (Port out of range 0-65535)"),
        ("http://", "names no http(s) host"),
        ("http://127.0.0.1:1?timeout=nan", "timeout=nan must be a finite number of seconds > 0"),
        ("http://127.0.0.1:1?timeout=inf", "timeout=inf must be a finite number of seconds > 0"),
        ("http://127.0.0.1:1?timeout=-1", "timeout=-1 must be a finite number of seconds > 0"),
        ("http://127.0.0.1:1?timeout=0", "timeout=0 must be a finite number of seconds > 0"),
        ("http://127.0.0.1:1?backoff=-1", "backoff=-1 must be a finite number of seconds >= 0"),
        ("http://127.0.0.1:1?backoff=nan", "backoff=nan must be a finite number of seconds >= 0"),
        ("http://127.0.0.1:1?retries=0", "retries=0 must be a whole number of tries >= 1"),
        ("http://127.0.0.1:1?retries=two", "retries=two must be a whole number of tries >= 1"),
    ],
)
def test_bad_reward_urls_are_one_line(url, message):
    with pytest.raises(GenrlError) as info:
        load_reward(url)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert str(info.value).endswith("http://HOST:PORT?timeout=SECONDS&retries=N&backoff=SECONDS")


# Bounds: what one client can take of the server's time, threads and memory, and of the client's time.


def test_a_silent_client_gets_408_before_it_is_dropped(serve):
    url = serve(zeros, read_timeout_s=0.3)
    start = time.perf_counter()
    status, answer = raw(url, b"")
    assert status == 408 and "did not arrive within --read-timeout-s 0.3" in answer["error"]
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(
    "head", [b"", b"POST /score HTTP/1.1\r\n", b"POST /score HTTP/1.1\r\nContent-Length: 1000\r\n\r\n"]
)
def test_a_client_sending_a_byte_at_a_time_is_cut_at_the_deadline(serve, head):
    # A byte every 0.1 s would reset a per-read timeout of 0.5 s for ever: the deadline is for the whole request.
    url = serve(zeros, read_timeout_s=0.5)
    start = time.perf_counter()
    status, answer = drip(url, head, every=0.1, give_up_s=3.0)
    assert status == 408 and "--read-timeout-s 0.5" in answer["error"], answer
    assert time.perf_counter() - start < 1.5


def test_connections_over_the_cap_are_answered_503_without_a_thread(serve):
    url = serve(zeros, max_connections=4, read_timeout_s=1.0)
    before = threading.active_count()
    sockets = [connect(url) for _ in range(20)]  # silent: each would hold a thread until its deadline
    try:
        time.sleep(0.3)
        assert threading.active_count() - before <= 4
        answers = [read_answer(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert sorted(status for status, _ in answers) == [408] * 4 + [503] * 16
    assert "--max-connections 4" in next(answer["error"] for status, answer in answers if status == 503)
    time.sleep(0.2)  # the 408s' threads end once their clients close
    assert post(url, score_body()) == (200, {"rewards": [0.0]})


def test_headers_are_bounded(serve):
    url = serve(zeros)
    body, pad = score_body(), "".join(f"X-Pad-{i}: {'a' * 2000}\r\n" for i in range(40))  # 80 KB, 40 lines
    status, answer = raw(url, f"POST /score HTTP/1.1\r\nContent-Length: {len(body)}\r\n{pad}\r\n".encode() + body)
    assert status == 431 and "over 65536 bytes" in answer["error"]


@pytest.mark.parametrize(
    "bomb",
    [
        b"[" + b"{}," * 1_000_000 + b"{}]",  # 3 MB that parse to 72 MB of dicts
        b'{"metadata": [' + b"[]," * 1_000_000 + b'[]], "prompts": ["a"], "images": [""]}',
        b"[" + b'"ab",' * 1_000_000 + b'"ab"]',
        b"[" + b"1.5," * 1_000_000 + b"1.5]",
    ],
)
def test_json_that_parses_to_many_times_its_size_is_refused_before_parsing(bomb):
    tracemalloc.start()
    try:
        with pytest.raises(Refused) as info:
            parse_request(bomb, max_items=1024)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.status == 413 and "JSON values" in info.value.message
    assert peak < len(bomb) / 10, peak  # parsed, it would take 10-24x its size


@pytest.mark.parametrize("shape", [(4, 64, 64), (256, 8, 8), (4, 4096, 1), (4, 1, 4096)])
def test_noise_at_the_pixel_caps_fits_the_default_body_cap(serve, shape):
    # The default --max-request-mb follows the pixel caps: what the client sends for a full batch of images that
    # do not compress, of any shape (one pixel wide is the worst: a filter byte per 3 bytes of colour), must fit.
    n, height, width = shape
    url = serve(zeros, max_items=n, max_request_pixels=n * height * width, max_image_pixels=height * width)
    images = torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(0))
    metadata = [{"question": "is there a cat?", "answer": "yes"}] * n
    assert RemoteReward(url)(images, ["a photo of a cat on a sofa"] * n, metadata).tolist() == [0.0] * n
    body = len(json.dumps({"prompts": ["a"] * n, "metadata": metadata, "images": images_to_png(images)}))
    assert body <= default_request_bytes(n * height * width, n)


def test_the_client_refuses_more_images_than_max_items(serve):
    url = serve(zeros, max_items=2)
    with pytest.raises(GenrlError, match="takes at most 2 images per request \\(--max-items\\)"):
        RemoteReward(url)(torch.rand(3, 3, 8, 8), ["a"] * 3, [{}] * 3)


def test_a_body_waits_for_room_under_max_pending_mb(serve):
    url = serve(zeros, max_request_mb=0.01, max_pending_mb=0.01, read_timeout_s=1.0)
    stalled = connect(url)  # holds 8 of the 10 KB until its deadline, 1 s from now
    stalled.sendall(b"POST /score HTTP/1.1\r\nContent-Length: 8000\r\n\r\n" + b"x" * 100)
    time.sleep(0.5)
    start = time.perf_counter()
    assert post(url, score_body(1, metadata=[{"pad": "a" * 5000}])) == (200, {"rewards": [0.0]})
    assert time.perf_counter() - start > 0.3  # it waited for the stalled body's room, then was read and scored
    assert read_answer(stalled)[0] == 408
    stalled.close()


def test_a_body_that_finds_no_room_by_its_deadline_gets_503(serve):
    def slow(images, prompts, metadata):
        time.sleep(1.5)  # holds its body's room until it answers
        return torch.zeros(len(prompts))

    url = serve(slow, max_request_mb=0.01, max_pending_mb=0.01, read_timeout_s=0.5)
    body = score_body(1, metadata=[{"pad": "a" * 6000}])
    first = threading.Thread(target=lambda: answers.append(post(url, body)), daemon=True)
    answers: list = []
    first.start()
    time.sleep(0.2)
    status, answer = post(url, body)
    assert status == 503 and "--max-pending-mb 0.01" in answer["error"]
    first.join(timeout=10)
    assert answers == [(200, {"rewards": [0.0]})]


@contextlib.contextmanager
def dripping_server(drip_info: bool, head_at_once: bool):
    """A server that sends its answer one byte every 0.2 s (for 4 s at most), after the head at once if
    ``head_at_once``; /info at once unless ``drip_info``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def answer(connection: socket.socket):
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(1 << 16)
            info = request.startswith(b"GET")
            body = json.dumps({"reward": "drip", "differentiable": False} if info else {"rewards": [1.0]}).encode()
            data = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            at_once = len(data) if info and not drip_info else data.index(b"\r\n\r\n") + 4 if head_at_once else 0
            connection.sendall(data[:at_once])
            end = time.monotonic() + 4
            for byte in data[at_once:]:
                if time.monotonic() > end or stop.is_set():
                    return
                connection.sendall(bytes([byte]))
                time.sleep(0.2)

    def accept():
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed at the end of the test
                return
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("where", ["info head", "info body", "score head", "score body"])
def test_a_server_answering_a_byte_at_a_time_fails_the_client_at_its_timeout(where):
    # Each byte comes well within the 0.5 s timeout: a per-read timeout would wait for all of them.
    path, part = where.split()
    with dripping_server(drip_info=path == "info", head_at_once=part == "body") as url:
        start = time.perf_counter()
        with pytest.raises(GenrlError) as info:
            RemoteReward(url + "?timeout=0.5&retries=1")(torch.rand(1, 3, 8, 8), ["a"], [{}])
    assert time.perf_counter() - start < 1.3
    assert "failed 1 times (timed out: no full answer within 0.5 s)" in str(info.value)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident memory from Linux's /proc")
def test_stalled_bodies_never_hold_more_than_max_pending_mb(serve):
    # Clients that send most of a body and stall, arriving one after another. Before, a body timed out (408) gave
    # its room to the next one while its traceback kept it alive for the 3 s the server lingers on its connection,
    # a growing buffer took more than its room, and malloc kept the freed blocks: 16 such clients took this process
    # 90-110 MB up against an 8 MB --max-pending-mb (30-60 clients of 50 MB: 1.6-1.9 GB against 431); now 9.
    cap, size, clients = 8_000_000, 4_000_000, 16
    url = serve(zeros, max_request_mb=size / 1e6, max_pending_mb=cap / 1e6, read_timeout_s=0.5)
    head = f"POST /score HTTP/1.1\r\nContent-Length: {size}\r\n\r\n".encode()
    part = b"x" * (size - 1000)  # all but the body's last bytes, the same object for every client
    sockets: list[socket.socket] = []

    def client():
        sock = connect(url, timeout=10)
        sockets.append(sock)
        with contextlib.suppress(OSError):  # refused and closed while it still sends
            sock.sendall(head)
            sock.sendall(part)
        # Then it stalls, its connection open until the end of the test, as a hostile client's would be.

    peak, done = [0], threading.Event()

    def sample():  # the server runs in this process: its memory is this process's
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.005)

    before = _resident_bytes()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        threads = []
        for _ in range(clients):
            threads.append(threading.Thread(target=client, daemon=True))
            threads[-1].start()
            time.sleep(0.1)
        for thread in threads:
            thread.join(timeout=30)
    finally:
        done.set()
        sampler.join()
        for sock in sockets:
            sock.close()
    # Beside the bodies: each connection's thread stack and read buffers, a few hundred KB in all.
    grown = peak[0] - before
    assert grown < cap + 3_000_000, f"{grown / 1e6:.1f} MB held against --max-pending-mb {cap / 1e6:g}"


def test_a_prompt_of_100_mb_is_refused_and_the_cap_is_in_info(serve):
    url = serve(zeros, max_request_mb=120)
    status, answer = post(url, score_body(1, prompts=["a" * 100_000_000]))
    assert status == 413 and "prompt 0 is 100000000 characters, over" in answer["error"]
    assert post(url, score_body(1, prompts=["a" * 4096])) == (200, {"rewards": [0.0]})  # at the cap: scored
    with urllib.request.urlopen(url + "/info", timeout=10) as info:
        assert json.loads(info.read())["limits"]["max_prompt_chars"] == 4096
    assert ServeConfig("zeros", max_prompt_chars=10).max_prompt_chars == 10
    with pytest.raises(GenrlError, match="--max-prompt-chars must be positive, not 0"):
        ServeConfig("zeros", max_prompt_chars=0)


def test_room_that_comes_after_the_deadline_is_not_taken():
    from genrl.rewards.serve import Budget

    budget = Budget(10)
    assert not budget.take(1, time.monotonic() - 0.01)  # room enough, but the request has no time left to arrive
    assert budget.used == 0
    assert budget.take(10, time.monotonic() + 1) and budget.used == 10

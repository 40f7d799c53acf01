"""The reward server and its client: a real HTTP server on 127.0.0.1, trained against, failing and stalling."""

import base64
import http.client
import io
import json
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from genrl.errors import GenrlError
from genrl.rewards import load_reward
from genrl.rewards.base import CheckedReward
from genrl.rewards.remote import RemoteReward
from genrl.rewards.serve import ServeConfig, make_server
from genrl.rewards.serve import main as serve_main
from genrl.train import main
from tests.helpers import fast_args


@pytest.fixture
def serve():
    servers = []

    def start(reward, **settings):
        checked = reward if isinstance(reward, CheckedReward) else CheckedReward(reward, "test")
        server = make_server(checked, ServeConfig("test", host="127.0.0.1", port=0, **settings))
        threading.Thread(target=server.serve_forever, daemon=True).start()
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
    with pytest.raises(GenrlError, match="failed 2 times \\(timed out\\)"):
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


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
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


def raw(url: str, data: bytes, timeout: float = 10.0) -> tuple[int, dict]:
    """Send ``data`` as it is; the status and JSON body of the answer (the server closes after each request)."""
    address = urllib.parse.urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head, "the server closed the connection without an answer"
    return int(head.split()[1]), json.loads(body)


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
        (score_body(), {"Content-Length": str(10**12)}, 413, "over the server's --max-request-mb 256.0"),
        (b"{not json", {}, 400, "the body is not JSON"),
        (b"[1, 2]", {}, 400, "the body must be a JSON object"),
        (b"[" * 100000, {}, 400, "the body is not JSON"),
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


def test_fifty_clients_at_once_are_all_answered(serve):
    url = serve(zeros)
    port = urllib.parse.urlsplit(url).port
    body, barrier, statuses = score_body(), threading.Barrier(50), []

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            barrier.wait(timeout=30)
            connection.request("POST", "/score", body, {"Content-Type": "application/json"})
            statuses.append(connection.getresponse().status)
        except OSError as exc:
            statuses.append(type(exc).__name__)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200] * 50


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
    threading.Thread(target=server.serve_forever, daemon=True).start()
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


def test_bad_server_settings_stop_in_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        serve_main(["--reward", "jpeg_compressibility", "--max-image-pixels", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --max-image-pixels must be positive, not 0"

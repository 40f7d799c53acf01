"""VLM judges over an OpenAI-compatible chat API, against a fake server in a thread that judges by brightness: the
pointwise score is 1 + 4 x the image's mean brightness, the pairwise preference the brighter image."""

import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from genrl.errors import GenrlError
from genrl.rewards import load_reward
from genrl.rewards.judge import win_rates
from genrl.train import main
from tests.helpers import expect_error, fast_args, logged_metrics

MODELS = ["judge", "bare", "pair", "garbage", "busy", "slow", "wide"]


def brightness(data_url: str) -> float:
    assert data_url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(data_url.partition(",")[2])))
    return float(np.asarray(image.convert("RGB"), dtype=np.float64).mean()) / 255


class FakeOpenAI(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, answer):
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:  # the client gave up (a timeout test)
            pass

    def do_GET(self):
        if self.path != "/v1/models":
            return self._send(404, {"error": {"message": f"no route {self.path}", "type": "NotFound"}})
        self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]})

    def do_POST(self):
        server = self.server
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append((request, dict(self.headers)))
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            calls = len(server.requests)
        try:
            status, answer = self._answer(request, calls)
        finally:  # before the answer goes out: the client may send its next request the moment it has it
            with server.lock:
                server.in_flight -= 1
        self._send(status, answer)

    def _answer(self, request: dict, calls: int) -> tuple[int, dict]:
        model = request["model"]
        if self.path != "/v1/chat/completions":
            return 404, {"error": {"message": "not found"}}
        if model == "busy" and calls <= 2:
            return 503, {"error": {"message": "overloaded", "type": "ServiceUnavailable"}}
        if model == "slow":
            time.sleep(2)
        if model == "judge":
            time.sleep(0.2)  # long enough for concurrent requests to overlap, on a busy machine too
        content = request["messages"][0]["content"]
        values = [brightness(part["image_url"]["url"]) for part in content if part["type"] == "image_url"]
        if model == "pair":
            answer = f"<think>...</think><answer>Image {1 if values[0] >= values[1] else 2} is better</answer>"
        elif model == "bare":
            answer = f"{1 + 4 * values[0]:.6f}"
        elif model == "garbage":
            answer = "I cannot judge this image."
        elif model == "wide":
            answer = f"Final Score: {10 * values[0]:.6f}"
        else:
            answer = f"The caption matches.\nFinal Score: {1 + 4 * values[0]:.6f}"
        return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}


@pytest.fixture
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    server.daemon_threads = True
    server.lock, server.requests, server.in_flight, server.max_in_flight = threading.Lock(), [], 0, 0
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    server.server_close()


def quantised_brightness(images):
    return ((images * 255).round() / 255).mean(dim=(1, 2, 3))


def judge(server, model="judge", **options):
    options = {"url": server.url, "model": model, **options}
    return load_reward("vlm_judge(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")")


def test_pointwise_scores_are_the_judges_numbers_normalised(fake):
    images = (
        torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        * torch.linspace(0.2, 1, 6)[:, None, None, None]
    )
    prompts = [f"a photo of a cat {i}" for i in range(6)]
    reward = judge(fake, concurrency=3)
    value = reward(images, prompts, [{}] * 6)
    # (1 + 4 b - 1) / (5 - 1) = b, the 8-bit image's mean brightness
    torch.testing.assert_close(value, quantised_brightness(images).float(), atol=1e-5, rtol=0)
    assert not reward.differentiable and 1 < fake.max_in_flight <= 3
    request, headers = fake.requests[0]
    assert request["model"] == "judge" and request["temperature"] == 0 and "Authorization" not in headers
    (message,) = request["messages"]
    image_part, text_part = message["content"]
    assert image_part["type"] == "image_url" and text_part["type"] == "text"
    assert "Text Caption: [a photo of a cat " in text_part["text"] and "Final Score:" in text_part["text"]
    assert {r["messages"][0]["content"][1]["text"].split("[")[-1] for r, _ in fake.requests} == {
        f"{p}]" for p in prompts
    }


def test_a_bare_number_a_template_file_a_range_and_a_key(fake, tmp_path, monkeypatch):
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    template = tmp_path / "template.txt"
    template.write_text("Rate {prompt} from 1 to 5, {braces} kept. Answer with the number only.")
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    reward = judge(fake, "bare", template_file=template, api_key_env="JUDGE_KEY")
    torch.testing.assert_close(
        reward(images, ["x"] * 3, [{}] * 3), quantised_brightness(images).float(), atol=1e-5, rtol=0
    )
    request, headers = fake.requests[-1]
    assert (
        request["messages"][0]["content"][1]["text"]
        == "Rate x from 1 to 5, {braces} kept. Answer with the number only."
    )
    assert headers["Authorization"] == "Bearer sk-test"
    wide = judge(fake, "wide", min=0, max=10)
    torch.testing.assert_close(
        wide(images, ["x"] * 3, [{}] * 3), quantised_brightness(images).float(), atol=1e-5, rtol=0
    )


def test_pairwise_win_rates_within_each_prompts_group(fake):
    levels = torch.tensor([0.2, 0.8, 0.5, 0.9, 0.1, 0.4, 0.6])
    images = levels[:, None, None, None].expand(7, 3, 8, 8).contiguous()
    prompts = ["a cat"] * 3 + ["a dog"] * 3 + ["a bird"]
    value = judge(fake, "pair", mode="pairwise")(images, prompts, [{}] * 7)
    # cat: 0.2 < 0.5 < 0.8; dog: 0.1 < 0.4 < 0.9; a bird alone: 0.5
    assert value.tolist() == [0.0, 1.0, 0.5, 1.0, 0.0, 0.5, 0.5]
    assert len(fake.requests) == 3 + 3  # each pair of each group once
    contents = [request["messages"][0]["content"] for request, _ in fake.requests]
    assert all([part["type"] for part in content] == ["image_url", "image_url", "text"] for content in contents)
    assert (
        sorted(content[2]["text"].split("[")[1].split("]")[0] for content in contents) == ["a cat"] * 3 + ["a dog"] * 3
    )


def test_win_rates_by_hand():
    # 0 beats 1, 2 beats 0, 1 beats 2: each wins one of two; 3 compared with nothing
    assert win_rates(4, [(0, 1), (0, 2), (1, 2)], [0, 1, 0]).tolist() == [0.5, 0.5, 0.5, 0.5]
    assert win_rates(3, [(0, 1), (0, 2), (1, 2)], [0, 0, 0]).tolist() == [1.0, 0.5, 0.0]


def test_unparsable_answers_are_refused_in_one_line(fake):
    with pytest.raises(GenrlError) as info:
        judge(fake, "garbage")(torch.rand(2, 3, 8, 8), ["a", "b"], [{}, {}])
    assert str(info.value) == (
        "reward 'vlm_judge': 2 of 2 answers of garbage hold no score in [1, 5], e.g. 'I cannot judge this image.'; "
        "fix the template (template=, template_file=) or how answers are read (pattern=)"
    )
    with pytest.raises(GenrlError, match="answers of wide hold no score in \\[1, 5\\], e.g. 'Final Score: "):
        judge(fake, "wide")(torch.ones(1, 3, 8, 8), ["a"], [{}])  # 10 is outside the range
    with pytest.raises(GenrlError, match="hold no preference for Image 1 or 2"):
        judge(fake, "garbage", mode="pairwise")(torch.rand(2, 3, 8, 8), ["a", "a"], [{}, {}])


def test_retries_timeouts_and_refusals_are_the_reward_clients(fake):
    value = judge(fake, "busy", retries=3, backoff=0.01)(torch.full((1, 3, 8, 8), 0.5), ["a"], [{}])
    assert value.item() == pytest.approx(128 / 255) and len(fake.requests) == 3  # two 503s, then the answer
    start = time.perf_counter()
    with pytest.raises(
        GenrlError, match=r"VLM judge http://127.0.0.1:\d+/v1 failed 2 times \(timed out: no full answer within 0.3 s\)"
    ):
        judge(fake, "slow", timeout=0.3, retries=2, backoff=0.01)(torch.rand(1, 3, 8, 8), ["a"], [{}])
    assert time.perf_counter() - start < 2
    with pytest.raises(GenrlError, match="does not serve the model 'llava'; it serves judge, bare"):
        judge(fake, "llava")
    with pytest.raises(GenrlError, match=r"/v1/extra refused the request \(404\): no route /v1/extra/models"):
        load_reward(f"vlm_judge(url={fake.url}/extra, model=judge)")
    with pytest.raises(GenrlError, match="needs the server and the model"):
        load_reward("vlm_judge")


def test_training_two_epochs_against_a_judge(fake, tmp_path, capsys):
    main(fast_args(tmp_path, "judge", "--reward", f"vlm_judge(url={fake.url}, model=judge)"))
    records = logged_metrics(tmp_path / "judge")
    assert [r["epoch"] for r in records] == [1, 2] and all(0 <= r["reward_mean"] <= 1 for r in records)
    assert len(fake.requests) == 2 * 4  # 2 epochs of one batch of 4 images
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = expect_error(
        capsys,
        fast_args(tmp_path, "off", "--reward", f"vlm_judge(url=http://127.0.0.1:{port}/v1, model=m, retries=1)"),
        f"VLM judge http://127.0.0.1:{port}/v1 failed 1 times",
    )
    assert "vllm serve" in line

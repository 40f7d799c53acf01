"""``python -m genrl.rewards.serve --reward NAME --port P``: serve any reward over HTTP (see ``remote``).

Listens on 127.0.0.1 unless ``--host`` says otherwise. Requests are scored one at a time, in arrival order.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tyro

from genrl.errors import GenrlError
from genrl.rewards.base import CheckedReward
from genrl.rewards.registry import load_reward
from genrl.rewards.remote import png_to_images


@dataclass
class ServeConfig:
    reward: str
    """Any --reward of genrl.train (a name, NAME(options), module:function or a composite)."""
    port: int = 8000
    host: str = "127.0.0.1"
    """Interface to listen on; the default answers this machine only."""
    max_request_mb: float = 256.0
    """Larger requests are refused."""


def make_server(reward: CheckedReward, host: str, port: int, max_request_mb: float = 256.0) -> ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timed out) first
                self.close_connection = True

        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            if self.path == "/info":
                self._answer(200, {"reward": reward.name, "differentiable": False})
            else:
                self._answer(404, {"error": f"no such path {self.path}; use GET /info or POST /score"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/score":
                return self._answer(404, {"error": f"no such path {self.path}; use POST /score"})
            length = int(self.headers.get("Content-Length", 0))
            if length > max_request_mb * 1e6:
                return self._answer(413, {"error": f"request of {length / 1e6:.0f} MB is over {max_request_mb} MB"})
            try:
                request = json.loads(self.rfile.read(length))
                images = png_to_images(request["images"])
                prompts = list(request["prompts"])
                metadata = list(request.get("metadata") or [{} for _ in prompts])
            except (ValueError, KeyError, TypeError, OSError) as exc:
                return self._answer(400, {"error": f"malformed request ({exc})"})
            try:
                with lock:
                    rewards = reward(images, prompts, metadata)
            except GenrlError as exc:
                return self._answer(500, {"error": str(exc)})
            self._answer(200, {"rewards": rewards.tolist()})

        def log_message(self, format: str, *args) -> None:  # one quiet line per request on stderr
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    cfg = tyro.cli(ServeConfig, args=sys.argv[1:] if argv is None else argv, description=__doc__)
    try:
        server = make_server(load_reward(cfg.reward), cfg.host, cfg.port, cfg.max_request_mb)
    except GenrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
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

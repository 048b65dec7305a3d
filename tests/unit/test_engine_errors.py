"""docker-py errors from the Swarm and deploy paths reach the user as one-line DStreamErrors
(issue 20, library audit A1.4): an engine that answers every Swarm call with an error, and
an engine that cannot be reached."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


class _FailingEngine(BaseHTTPRequestHandler):
    """Answers the handshake docker-py needs (ping, version, info: an active swarm) and
    a 500 with an engine message to everything else, as dockerd does on an internal error."""

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Api-Version", "1.41")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path.endswith("/_ping"):
            self._reply(200, b"OK")
        elif path.endswith("/version"):
            self._reply(200, {"ApiVersion": "1.41", "Version": "24.0.0", "MinAPIVersion": "1.12"})
        elif path.endswith("/info"):
            self._reply(200, {"Swarm": {"LocalNodeState": "active"}})
        else:
            self._reply(500, {"message": "engine exploded on " + path})

    do_POST = do_GET  # noqa: N815
    do_DELETE = do_GET  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def failing_engine() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _hcl(task_file: Callable[..., Path]) -> Path:
    return task_file(
        """
        task "orders" {
          input { provider_path = "counter-input-provider" }
          output { provider_path = "console-output-provider" }
        }
        """
    )


def test_swarm_and_deploy_paths_translate_engine_errors(failing_engine: str, task_file: Callable[..., Path]) -> None:
    env = {"DOCKER_HOST": failing_engine, "DOCKER_CONTEXT": ""}
    path = _hcl(task_file)
    for args in (["deploy", "--list"], ["undeploy", "orders"], ["deploy", "orders", "-f", str(path)]):
        result = run_cli(*args, env=env, timeout=60)
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.stderr.startswith("error: "), (args, result.stderr)
        assert "engine exploded" in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_unreachable_engine_is_one_line(task_file: Callable[..., Path]) -> None:
    env = {"DOCKER_HOST": "tcp://127.0.0.1:1", "DOCKER_CONTEXT": ""}
    for args in (["deploy", "--list"], ["undeploy", "orders"], ["deploy", "orders", "-f", str(_hcl(task_file))]):
        result = run_cli(*args, env=env, timeout=60)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "cannot reach the Docker engine" in result.stderr, result.stderr

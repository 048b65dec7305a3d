"""An OCI registry in a thread that can lie: serve other bytes under a digest, send a wrong
``Docker-Content-Digest``, stream a blob longer than declared, ask for a login (Basic, or
Bearer with a token service of its choosing), and record every request it got.

The honest behaviour follows the distribution spec (opencontainers/distribution-spec,
spec.md "Pulling manifests", "Pulling blobs"): ``GET /v2/<name>/manifests/<reference>`` by
tag or digest, ``GET /v2/<name>/blobs/<digest>``, 401 with ``WWW-Authenticate`` when a login
is needed (docker/distribution docs/spec/auth/token.md).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ARTIFACT_TYPE = "application/vnd.dstream.provider"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Reply:
    """One answer: a body (bytes, or a function writing to the socket and returning how much
    it wrote) and headers."""

    body: bytes | Callable[[Any], int]
    headers: dict[str, str] = field(default_factory=dict)


class FakeRegistry:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.manifests: dict[tuple[str, str], Reply] = {}
        self.blobs: dict[str, Reply] = {}
        self.seen: list[Seen] = []
        self.sent: dict[str, int] = {}  # blob digest -> bytes written before the client hung up
        self.login: tuple[str, str] | None = None  # Basic auth required when set
        self.token_realm: str | None = None  # Bearer challenge with this realm when set
        self._server = http.server.ThreadingHTTPServer((host, 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        address, port = self._server.server_address[:2]
        return f"{address}:{port}"

    def __enter__(self) -> FakeRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_artifact(self, repository: str, tag: str, executables: dict[str, bytes]) -> str:
        """An upstream-style ORAS artifact (as tests/integration/oras_push.py pushes one)
        served under ``tag`` and its digest; returns the manifest digest."""
        body = self.artifact_manifest(executables)
        digest = sha256(body)
        for reference in (tag, digest):
            self.manifests[(repository, reference)] = Reply(body, {"Docker-Content-Digest": digest})
        return digest

    def artifact_manifest(self, executables: dict[str, bytes]) -> bytes:
        layers = []
        for title, content in executables.items():
            self.blobs[sha256(content)] = Reply(content)
            layers.append(
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(content),
                    "size": len(content),
                    "annotations": {"org.opencontainers.image.title": title},
                }
            )
        self.blobs[sha256(b"{}")] = Reply(b"{}")
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"), "size": 2},
            "layers": layers,
        }
        return json.dumps(manifest).encode()

    def sent_of(self, digest: str, deadline: float = 10.0) -> int:
        """The bytes of blob ``digest`` the client took, once its connection is over (the
        server thread notes it when its write fails or ends)."""
        limit = time.monotonic() + deadline
        while digest not in self.sent:
            if time.monotonic() > limit:
                raise AssertionError(f"the fake registry never finished sending {digest}")
            time.sleep(0.01)
        return self.sent[digest]

    def authorizations(self, prefix: str = "/v2/") -> list[str]:
        """The Authorization headers of the requests under ``prefix`` (empty when none was sent)."""
        return [s.headers.get("Authorization", "") for s in self.seen if s.path.startswith(prefix)]


def stream_of(size: int) -> Callable[[Any], int]:
    """A body of ``size`` bytes written in 64 KiB pieces; returns what the client took."""

    def write(wfile: Any) -> int:
        sent = 0
        piece = b"x" * 65536
        try:
            while sent < size:
                wfile.write(piece[: size - sent])
                sent += min(len(piece), size - sent)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return sent

    return write


def stream_of_bytes(data: bytes) -> Callable[[Any], int]:
    """``data`` with no Content-Length (the body ends when the connection closes)."""

    def write(wfile: Any) -> int:
        try:
            wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            return 0
        return len(data)

    return write


def _handler(fake: FakeRegistry) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            fake.seen.append(Seen("GET", self.path, dict(self.headers.items())))
            if self.path.startswith("/token"):
                self._token()
                return
            if not self._authorized():
                return
            for reply, blob in self._route():
                self._send(reply, blob)
                return
            self._plain(404, b'{"errors":[{"code":"NOT_FOUND"}]}')

        def _route(self) -> Iterator[tuple[Reply, str]]:
            path = self.path.split("?", 1)[0]
            if path == "/v2/":
                yield Reply(b"{}"), ""
            elif "/manifests/" in path:
                repository, reference = path[len("/v2/") :].split("/manifests/", 1)
                if (repository, reference) in fake.manifests:
                    yield fake.manifests[(repository, reference)], ""
            elif "/blobs/" in path:
                digest = path.rsplit("/blobs/", 1)[1]
                if digest in fake.blobs:
                    yield fake.blobs[digest], digest

        def _authorized(self) -> bool:
            got = self.headers.get("Authorization", "")
            if fake.login is not None:
                basic = "Basic " + base64.b64encode(":".join(fake.login).encode()).decode()
                if got == ("Bearer fake-token" if fake.token_realm else basic):
                    return True
                challenge = (
                    f'Bearer realm="{fake.token_realm}",service="fake"' if fake.token_realm else 'Basic realm="fake"'
                )
                self._plain(401, b"{}", {"WWW-Authenticate": challenge})
                return False
            return True

        def _token(self) -> None:
            expected = "Basic " + base64.b64encode(":".join(fake.login or ("", "")).encode()).decode()
            if self.headers.get("Authorization") != expected:
                self._plain(401, b"{}")
                return
            self._plain(200, json.dumps({"token": "fake-token"}).encode())

        def _send(self, reply: Reply, blob: str) -> None:
            self.send_response(200)
            headers = {"Content-Type": OCI_MANIFEST, **reply.headers}
            if isinstance(reply.body, bytes):
                headers.setdefault("Content-Length", str(len(reply.body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if isinstance(reply.body, bytes):
                self.wfile.write(reply.body)
                sent = len(reply.body)
            else:  # no Content-Length: HTTP/1.0, the body ends when the connection closes
                sent = reply.body(self.wfile)
            if blob:
                fake.sent[blob] = sent

        def _plain(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler

"""Library pieces instead of hand-written ones: sizes (rich.filesize), per-user directories
(platformdirs, XDG), requirement strings (packaging), log formatters that keep exceptions;
and the registry's OAuth2 identity-token flow, against a real HTTP server in a thread."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

import pytest

from dstream import log
from dstream.distribution.reference import parse
from dstream.distribution.registry import RegistryClient
from dstream.redact import Redactor
from dstream.task.progress import Progress
from dstream.task.statusline import describe, human_size

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def test_one_size_function_for_the_live_line_and_the_summary() -> None:
    assert human_size(1_500_000) == "1.5 MB"  # the summary said "1.4 MB" (binary units) before
    snap = Progress("t", "r1", "running", 10, 1_500_000, 10, 1_500_000, 1, 0, 0, 0, False, None, {}, "")
    assert "10 envelopes (1.5 MB)" in describe(snap, 0.0, 0.0)


def test_xdg_directories_are_honoured_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dstream.config import treecache
    from dstream.distribution import artifacts
    from dstream.task import runs

    for name in ("DSTREAM_CACHE", "DSTREAM_RUNS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert runs.runs_dir() == tmp_path / "state" / "dstream" / "runs"
    assert artifacts.artifact_cache() == tmp_path / "cache" / "dstream" / "artifacts"
    assert treecache._folder() == tmp_path / "cache" / "dstream" / "hcl"
    monkeypatch.setenv("DSTREAM_CACHE", str(tmp_path / "mine"))
    assert artifacts.artifact_cache() == tmp_path / "mine" / "artifacts"
    assert treecache._folder() == tmp_path / "mine" / "hcl"


@pytest.mark.parametrize(
    ("dependencies", "kept"),
    [
        (["dstream>=0.1", "jq>=1.6"], ["jq>=1.6"]),
        (["DStream[azure] >= 0.1", "orjson"], ["orjson"]),
        (["dstream ; python_version >= '3.11'", "psycopg[binary]>=3.1"], ["psycopg[binary]>=3.1"]),
        (["dstream-extras>=1", "dstream"], ["dstream-extras>=1"]),  # another package whose name starts alike
    ],
)
def test_provider_requirements_drop_dstream_in_any_spelling(
    tmp_path: Path, dependencies: list[str], kept: list[str]
) -> None:
    from dstream.tooling.images import _requirements

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f"[project]\nname = 'x'\ndependencies = {json.dumps(dependencies)}\n")
    assert _requirements(pyproject) == kept


def _record(message: str) -> logging.LogRecord:
    try:
        raise ValueError("password=hunter2 was refused")
    except ValueError:
        return logging.LogRecord("dstream.t", logging.ERROR, __file__, 1, message, None, __import__("sys").exc_info())


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_formatters_keep_exceptions_redacted(fmt: str) -> None:
    log.set_redactor(Redactor(frozenset({"hunter2"})))
    try:
        handler_formatter = log._JsonFormatter() if fmt == "json" else log._TextFormatter(dated=True)
        record = _record("it failed")
        log._filter.filter(record)
        text = handler_formatter.format(record)
    finally:
        log.set_redactor(Redactor(frozenset()))
    if fmt == "json":
        out = json.loads(text)
        assert out["message"] == "it failed"
        text = out["exception"]
    assert "Traceback (most recent call last)" in text
    assert "ValueError: password=*** was refused" in text
    assert "hunter2" not in text


class _TokenRegistry(http.server.BaseHTTPRequestHandler):
    """/v2/… answers 401 with a bearer challenge unless the token is right; /token grants
    it for a refresh token (the OAuth2 flow of docker/distribution docs/spec/auth/oauth.md)."""

    seen: list[dict[str, Any]] = []  # noqa: RUF012 - shared with the test on purpose

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        form = dict(pair.split("=", 1) for pair in self.rfile.read(length).decode().split("&"))
        type(self).seen.append(form)
        ok = form.get("grant_type") == "refresh_token" and form.get("refresh_token") == "refresh-me"
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(json.dumps({"access_token": "granted"}).encode())

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Bearer granted":
            self.send_response(401)
            realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
            self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="test"')
            self.end_headers()
            return
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def token_registry() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_identity_tokens_from_a_credential_store_get_a_bearer_token(
    token_registry: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = f"127.0.0.1:{token_registry}"
    # docker-py reads an identity token from a config entry as it would from a helper.
    config = {"auths": {host: {"identitytoken": "refresh-me", "auth": base64.b64encode(b"x:y").decode()}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    ref = parse(f"{host}/team/app:1")
    manifest = RegistryClient().manifest(ref)  # the registry answers only "Bearer granted"
    assert manifest.media_type == "application/vnd.oci.image.manifest.v1+json"
    (form,) = _TokenRegistry.seen
    assert form["grant_type"] == "refresh_token"
    assert form["service"] == "test"
    assert form["scope"] == "repository%3Ateam%2Fapp%3Apull"


def test_the_summary_says_what_each_stage_did() -> None:
    from dstream.cli.run import _per_stage
    from dstream.task.runner import RunSummary

    def summary(stages: dict[str, int], rejected: dict[str, int] | None = None) -> RunSummary:
        return RunSummary("t", "r", 1, stages["input"], 0, None, 0.0, 0, False, False, stages, rejected or {})

    assert _per_stage(summary({"input": 5})) == ""  # nothing in between: the headline says it all
    assert _per_stage(summary({"input": 4, "transform-1": 3})) == (
        "; transform-1: 4 in, 3 out (1 filtered); the output got 3"
    )
    assert _per_stage(summary({"input": 4, "transform-1": 3}, {"transform-1": 1})) == (
        "; transform-1: 4 in, 3 out (1 dead-lettered); the output got 3"
    )
    assert _per_stage(summary({"input": 2, "transform-1": 5, "transform-2": 5})) == (
        "; transform-1: 2 in, 5 out (3 added); transform-2: 5 in, 5 out; the output got 5"
    )
    assert _per_stage(summary({"input": 1200, "transform-1": 1000})).endswith("the output got 1,000")

"""The engine is found as the docker CLI finds it: DOCKER_HOST, else the current docker context."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import pytest

from dstream.errors import RuntimeFailure
from dstream.runtime.docker import DockerEngine

if TYPE_CHECKING:
    from pathlib import Path


SOCKET = "/var/run/docker.sock"


def _context(config_dir: Path, name: str, host: str) -> None:
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    endpoint = {"Host": host, "SkipTLSVerify": False}
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Metadata": {}, "Endpoints": {"docker": endpoint}}))


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: DockerEngine) -> Path:
    """A docker config whose current context reaches this engine through another path."""
    folder = tmp_path / "docker"
    folder.mkdir()
    (tmp_path / "docker.sock").symlink_to(SOCKET)
    _context(folder, "linked", f"unix://{tmp_path / 'docker.sock'}")
    _context(folder, "nowhere", f"unix://{tmp_path / 'missing.sock'}")
    (folder / "config.json").write_text(json.dumps({"currentContext": "linked"}))
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    return folder


def test_the_current_context_is_used_when_docker_host_is_unset(docker_config: Path, tmp_path: Path) -> None:
    engine = DockerEngine()
    assert engine.client.ping()
    assert engine.client.api.base_url  # reached through the context's socket
    assert engine.client.api._custom_adapter.socket_path == str(tmp_path / "docker.sock")


def test_a_context_that_cannot_be_reached_is_named(docker_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONTEXT", "nowhere")  # DOCKER_CONTEXT beats currentContext, as in the CLI
    with pytest.raises(RuntimeFailure, match=r"missing\.sock \(docker context nowhere\)"):
        _ = DockerEngine().client
    monkeypatch.setenv("DOCKER_CONTEXT", "no-such-context")
    with pytest.raises(RuntimeFailure, match="docker context no-such-context does not exist"):
        _ = DockerEngine().client


def test_docker_host_wins_over_the_context(docker_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONTEXT", "nowhere")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{SOCKET}")
    assert DockerEngine().client.ping()

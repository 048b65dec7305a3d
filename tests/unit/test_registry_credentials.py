"""Registry logins never cross hosts and never travel in clear text unless the user said so
(security review round 3, rows 4 and 18), against registries in threads
(tests/fake_registry.py). Each case fails on the code before this change (checked)."""

from __future__ import annotations

import base64
import json
import logging
import socket
from typing import TYPE_CHECKING

import pytest

from dstream.distribution.reference import parse
from dstream.distribution.registry import RegistryClient
from dstream.errors import DistributionError
from tests.conftest import run_cli
from tests.fake_registry import FakeRegistry

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

REPO = "dstream/file-input-provider"
LOGIN = ("corp-user", "CorpPassw0rd")
EXE = b"#!/bin/sh\n"


def _docker_config(folder: Path, host: str) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(":".join(LOGIN).encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return {"DOCKER_CONFIG": str(folder)}


def _outward_address() -> str:
    """An address of this machine that is not loopback (a registry "on the network")."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # UDP connect sends nothing: it only picks the route
            address = str(probe.getsockname()[0])
    except OSError as exc:
        pytest.skip(f"this machine has no non-loopback IPv4 route: {exc}")
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address")
    return address


def test_dstream_lock_never_sends_one_registrys_login_to_another_with_the_same_repository(
    task_file: Callable[..., Path], tmp_path: Path
) -> None:
    """The review's demo: registry A wants a login (docker login'd), registry B serves the
    same repository path and wants none; `dstream lock` resolves both with one client."""
    with FakeRegistry() as private, FakeRegistry() as other:
        private.login = LOGIN
        private.add_artifact(REPO, "1", {"plugin.linux_amd64": EXE})
        other.add_artifact(REPO, "1", {"plugin.linux_amd64": EXE})
        # `dstream lock` resolves references in sorted order: the private one ("127.…") first.
        other_host = other.host.replace("127.0.0.1", "localhost")
        path = task_file(
            f"""
            task "a" {{
              input {{ provider_ref = "{other_host}/{REPO}:1" }}
              output {{ provider_ref = "{private.host}/{REPO}:1" }}
            }}
            """
        )
        env = _docker_config(tmp_path / "docker", private.host)
        result = run_cli("lock", "-f", str(path), env=env)
        assert result.returncode == 0, result.stderr
        assert any(a.startswith("Basic ") for a in private.authorizations()), "the login was used where it belongs"
        assert other.authorizations() == [""] * len(other.authorizations())
        assert other.authorizations(), "the other registry was asked"


def test_a_bearer_token_stays_with_the_registry_that_granted_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeRegistry() as private, FakeRegistry() as other:
        private.login = LOGIN
        private.token_realm = f"http://{private.host}/token"  # loopback: plain HTTP is fine
        private.add_artifact(REPO, "1", {"plugin.linux_amd64": EXE})
        other.add_artifact(REPO, "1", {"plugin.linux_amd64": EXE})
        monkeypatch.setenv("DOCKER_CONFIG", _docker_config(tmp_path / "docker", private.host)["DOCKER_CONFIG"])
        client = RegistryClient()
        client.manifest(parse(f"{private.host}/{REPO}:1"))
        client.manifest(parse(f"{other.host}/{REPO}:1"))
        client.manifest(parse(f"{private.host}/{REPO}:1"))
        assert "Bearer fake-token" in private.authorizations()
        assert set(other.authorizations()) == {""}


@pytest.mark.parametrize("registry_on", ["loopback", "declared insecure"])
def test_a_plain_http_token_realm_on_the_network_never_gets_the_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_on: str
) -> None:
    address = _outward_address()
    with (
        FakeRegistry(address) as token_service,
        FakeRegistry("127.0.0.1" if registry_on == "loopback" else address) as registry,
    ):
        token_service.login = LOGIN
        registry.login = LOGIN
        realm = f"http://{token_service.host}/token"
        registry.token_realm = realm
        registry.add_artifact(REPO, "1", {"plugin.linux_amd64": EXE})
        if registry_on != "loopback":
            monkeypatch.setenv("DSTREAM_INSECURE_REGISTRIES", registry.host)  # the registry, not its realm
        monkeypatch.setenv("DOCKER_CONFIG", _docker_config(tmp_path / "docker", registry.host)["DOCKER_CONFIG"])
        with pytest.raises(DistributionError) as refused:
            RegistryClient().manifest(parse(f"{registry.host}/{REPO}:1"))
        assert realm in str(refused.value)
        assert "plain HTTP" in str(refused.value)
        assert token_service.seen == []


def test_credentials_over_plain_http_go_only_to_a_declared_host_and_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    address = _outward_address()
    with FakeRegistry(address) as registry:
        registry.login = LOGIN
        registry.add_artifact(REPO, "1", {"plugin.linux_amd64": EXE})
        monkeypatch.setenv("DOCKER_CONFIG", _docker_config(tmp_path / "docker", registry.host)["DOCKER_CONFIG"])
        monkeypatch.setenv("DSTREAM_INSECURE_REGISTRIES", registry.host)
        with caplog.at_level(logging.WARNING, logger="dstream"):
            RegistryClient().manifest(parse(f"{registry.host}/{REPO}:1"))
        assert f"sending registry credentials to {registry.host} over plain HTTP" in caplog.text
        assert LOGIN[1] not in caplog.text
        # Not declared: spoken to over https, so nothing (least of all the login) goes in clear.
        monkeypatch.delenv("DSTREAM_INSECURE_REGISTRIES")
        seen = len(registry.seen)
        with pytest.raises(DistributionError):
            RegistryClient().manifest(parse(f"{registry.host}/{REPO}:1"))
        assert all("Authorization" not in s.headers for s in registry.seen[seen:])

"""Registries that need a login (the htpasswd registry on 127.0.0.1:5001): credentials from the
docker config's ``auths`` and from credential helpers, for ORAS executables and for images."""

from __future__ import annotations

import base64
import json
import os
import sys
import uuid
from typing import TYPE_CHECKING

import oras.client
import pytest
import requests

from tests.conftest import run_cli, service_unavailable
from tests.integration.oras_push import push_artifact

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine

AUTH_REGISTRY = os.environ.get("DSTREAM_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
USER, PASSWORD = "dstream", "dstream-test"  # scripts/dev/ensure-registry.sh --auth
HELPER = "dstreamtest"
COUNTER = b"""#!/usr/bin/env python3
import json, sys
command = json.loads(sys.stdin.readline())
for n in range(1, int(command["config"]["max"]) + 1):
    print(json.dumps({"data": {"value": n}, "metadata": {}}))
"""
# A docker credential helper (the protocol of docker/docker-credential-helpers): `get` reads
# the server on stdin and answers {"ServerURL", "Username", "Secret"}; it logs each question.
HELPER_SCRIPT = f"""#!{sys.executable}
import json, os, sys
server = sys.stdin.read().strip()
with open(os.environ["HELPER_LOG"], "a") as log:
    log.write(sys.argv[1] + " " + server + "\\n")
if sys.argv[1] != "get" or server != {AUTH_REGISTRY!r}:
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps({{"ServerURL": server, "Username": {USER!r}, "Secret": {PASSWORD!r}}}))
"""


@pytest.fixture(scope="session")
def auth_registry() -> str:
    try:
        answer = requests.get(f"http://{AUTH_REGISTRY}/v2/", timeout=5)
    except requests.RequestException as exc:
        service_unavailable(f"no htpasswd registry at {AUTH_REGISTRY} (scripts/dev/up.sh registry-auth): {exc}")
    if answer.status_code != 401:
        service_unavailable(f"the registry at {AUTH_REGISTRY} does not ask for a login ({answer.status_code})")
    return AUTH_REGISTRY


@pytest.fixture(scope="session")
def artifact(auth_registry: str) -> str:
    """An upstream-style executable artifact in the registry that needs a login."""
    client = oras.client.OrasClient(hostname=auth_registry, insecure=True, auth_backend="basic")
    client.auth.set_basic_auth(USER, PASSWORD)
    push_artifact(auth_registry, "dstream-test/private-counter", "1.0.0", {"plugin.linux_amd64": COUNTER}, "p", client)
    return f"{auth_registry}/dstream-test/private-counter:1.0.0"


def _docker_config(folder: Path, config: dict[str, object]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return {"DOCKER_CONFIG": str(folder)}


def _helper_env(tmp_path: Path, config_key: str) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / f"docker-credential-{HELPER}"
    helper.write_text(HELPER_SCRIPT)
    helper.chmod(0o755)
    config = {"credHelpers": {AUTH_REGISTRY: HELPER}} if config_key == "credHelpers" else {"credsStore": HELPER}
    env = _docker_config(tmp_path / "docker", {"auths": {}, **config})
    questions = tmp_path / "helper.log"
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", HELPER_LOG=str(questions))
    return env, questions


def _artifact_task(task_file: Callable[..., Path], task_name: str, ref: str) -> Path:
    return task_file(
        f"""
        task "{task_name}" {{
          input {{
            provider_ref = "{ref}"
            config {{ max = 4 }}
          }}
          output {{
            provider_path = "console-output-provider"
            config {{ outputFormat = "jsonl" }}
          }}
        }}
        """
    )


def _values(stdout: str) -> list[int]:
    return [json.loads(line)["data"]["value"] for line in stdout.splitlines()]


def test_oras_artifact_with_docker_login_credentials(
    artifact: str, task_file: Callable[..., Path], tmp_path: Path, task_name: str
) -> None:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    env = _docker_config(tmp_path / "docker", {"auths": {AUTH_REGISTRY: {"auth": auth}}})
    env["DSTREAM_CACHE"] = str(tmp_path / "cache")
    result = run_cli("run", task_name, "-f", str(_artifact_task(task_file, task_name, artifact)), env=env)
    assert result.returncode == 0, result.stderr
    assert _values(result.stdout) == [1, 2, 3, 4]
    assert "pulling plugin.linux_amd64" in result.stderr


@pytest.mark.parametrize("config_key", ["credHelpers", "credsStore"])
def test_oras_artifact_with_a_credential_helper(
    artifact: str, task_file: Callable[..., Path], tmp_path: Path, task_name: str, config_key: str
) -> None:
    env, questions = _helper_env(tmp_path, config_key)
    env["DSTREAM_CACHE"] = str(tmp_path / "cache")
    result = run_cli("run", task_name, "-f", str(_artifact_task(task_file, task_name, artifact)), env=env)
    assert result.returncode == 0, result.stderr
    assert _values(result.stdout) == [1, 2, 3, 4]
    assert f"get {AUTH_REGISTRY}" in questions.read_text().splitlines()


def test_image_with_a_credential_helper(
    auth_registry: str,
    engine: DockerEngine,
    provider_images: dict[str, str],
    task_file: Callable[..., Path],
    tmp_path: Path,
    task_name: str,
) -> None:
    counter = provider_images["counter-input-provider"]
    engine.client.api.pull(counter.rsplit(":", 1)[0], tag="0.1.0")
    repository = f"{auth_registry}/dstream-test/private-counter-{uuid.uuid4().hex[:8]}"
    engine.tag(counter, repository, "1")
    for event in engine.client.api.push(
        repository, tag="1", stream=True, decode=True, auth_config={"username": USER, "password": PASSWORD}
    ):
        assert "error" not in event, event
    engine.client.api.remove_image(f"{repository}:1")  # only the tag: the run has to pull it
    env, questions = _helper_env(tmp_path, "credHelpers")
    hcl = task_file(
        f"""
        task "{task_name}" {{
          input {{
            provider_ref = "{repository}:1"
            config {{
              interval  = 0
              max_count = 3
            }}
          }}
          output {{
            provider_path = "console-output-provider"
            config {{ outputFormat = "jsonl" }}
          }}
        }}
        """
    )
    try:
        result = run_cli("run", task_name, "-f", str(hcl), env=env)
        assert result.returncode == 0, result.stderr
        assert _values(result.stdout) == [1, 2, 3]
        assert f"get {auth_registry}" in questions.read_text().splitlines()
    finally:  # only this repository's references: the image itself is the shared counter image
        for image in engine.client.api.images(name=repository):
            for ref in [*(image.get("RepoTags") or []), *(image.get("RepoDigests") or [])]:
                if ref.startswith(repository):
                    engine.client.api.remove_image(ref, noprune=True)


def test_a_missing_helper_is_a_login_error_not_a_crash(
    artifact: str, task_file: Callable[..., Path], tmp_path: Path, task_name: str
) -> None:
    env = _docker_config(tmp_path / "docker", {"auths": {}, "credsStore": "no-such-helper"})
    env["DSTREAM_CACHE"] = str(tmp_path / "cache")
    result = run_cli("run", task_name, "-f", str(_artifact_task(task_file, task_name, artifact)), env=env)
    assert result.returncode == 1
    assert f"registry {AUTH_REGISTRY} needs a login: run `docker login {AUTH_REGISTRY}`" in result.stderr
    assert "Traceback" not in result.stderr

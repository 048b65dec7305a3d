"""Fixtures for tests against the real Docker engine and the local OCI registry.

``make test`` starts both (and sets DSTREAM_REQUIRE_SERVICES=1, so a missing engine fails
the run instead of skipping it). Every container a test starts carries dstream's task
label; the autouse fixture removes any that a failing test left behind.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from dstream.errors import DStreamError
from dstream.runtime.docker import DockerEngine
from dstream.tooling.images import Builder, base_tag
from tests.conftest import service_unavailable

if TYPE_CHECKING:
    from collections.abc import Iterator

REGISTRY = os.environ.get("DSTREAM_TEST_REGISTRY", "127.0.0.1:5000")
HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def engine() -> DockerEngine:
    found = DockerEngine()
    try:
        _ = found.client
    except DStreamError as exc:
        service_unavailable(str(exc))
    return found


@pytest.fixture(scope="session")
def registry(engine: DockerEngine) -> str:
    try:
        requests.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        service_unavailable(f"no OCI registry at {REGISTRY}: {exc}")
    return REGISTRY


def _in_registry(ref: str) -> bool:
    repo, _, tag = ref.split("/", 1)[1].rpartition(":")
    response = requests.head(
        f"http://{REGISTRY}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        timeout=10,
    )
    return response.status_code == 200


@pytest.fixture(scope="session")
def provider_images(engine: DockerEngine, registry: str) -> dict[str, str]:
    """The catalogue's counter, console and file images, in the local registry."""
    builder = Builder(engine)
    images = {}
    for name in ("counter-input-provider", "console-output-provider", "file-output-provider"):
        ref = f"{registry}/dstream/{name}:0.1.0"
        if not _in_registry(ref):
            builder.push(name, registry)
        images[name] = ref
    return images


def build_test_image(engine: DockerEngine, folder: str, ref: str) -> str:
    """Build images/<folder> on the provider base and push it to the local registry."""
    for _ in engine.build(HERE / "images" / folder, ref, {"PROVIDER_BASE": base_tag()}, {}):
        pass
    repository, _, tag = ref.rpartition(":")
    engine.push(repository, tag, lambda event: None)
    return ref


@pytest.fixture(scope="session")
def scripted_image(engine: DockerEngine, registry: str, provider_images: dict[str, str]) -> str:
    """A test provider image whose behaviour its config picks (see images/scripted)."""
    return build_test_image(engine, "scripted", f"{registry}/dstream-test/scripted-provider:1")


@pytest.fixture
def task_name() -> str:
    return f"it-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _remove_test_containers(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "engine" not in request.fixturenames:
        return
    engine: DockerEngine = request.getfixturevalue("engine")
    for info in engine.dstream_containers():
        if (info.get("Labels") or {}).get("io.dstream.task", "").startswith("it-"):
            engine.remove(info["Id"])


def task_containers(engine: DockerEngine, task: str) -> list[dict[str, object]]:
    return engine.dstream_containers(task)

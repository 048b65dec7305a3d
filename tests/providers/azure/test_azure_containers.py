"""The Storage queue providers as images, in containers on the real Docker engine.

The images come from the local registry (``make images`` builds every catalogue entry;
missing ones are built and pushed here). The provider containers use host networking
to reach Azurite on 127.0.0.1, and get the connection string only on stdin.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest
import requests

from dstream.errors import DStreamError
from tests.conftest import run_cli, service_unavailable
from tests.providers.azure.conftest import by_name, lifecycle

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine
    from tests.providers.azure.conftest import Azure

pytestmark = [pytest.mark.integration, pytest.mark.azurite]

REGISTRY = os.environ.get("DSTREAM_TEST_REGISTRY", "127.0.0.1:5000")
IMAGES = (
    "counter-input-provider",
    "console-output-provider",
    "azure-queue-output-provider",
    "azure-queue-input-provider",
)
LOCAL_BASE = "dstream-local/python:bookworm"


@pytest.fixture(scope="session")
def engine() -> DockerEngine:
    from dstream.runtime.docker import DockerEngine

    found = DockerEngine()
    try:
        _ = found.client
    except DStreamError as exc:
        service_unavailable(str(exc))
    return found


def _in_registry(ref: str) -> bool:
    repo, _, tag = ref.split("/", 1)[1].rpartition(":")
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    response = requests.head(f"http://{REGISTRY}/v2/{repo}/manifests/{tag}", headers={"Accept": accept}, timeout=10)
    return response.status_code == 200


@pytest.fixture(scope="session")
def azure_images(engine: DockerEngine) -> dict[str, str]:
    """The images in the local registry, built and pushed when missing."""
    from dstream.tooling.images import Builder

    try:
        requests.get(f"http://{REGISTRY}/v2/", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        service_unavailable(f"no OCI registry at {REGISTRY}: {exc}")
    if not os.environ.get("DSTREAM_BASE_IMAGE") and engine.image(LOCAL_BASE) is not None:
        os.environ["DSTREAM_BASE_IMAGE"] = LOCAL_BASE  # what `make` sets on machines without Docker Hub
    builder = Builder(engine)
    images = {}
    for name in IMAGES:
        ref = f"{REGISTRY}/dstream/{name}:0.1.0"
        if not _in_registry(ref):
            builder.push(name, REGISTRY)
        images[name] = ref
    return images


@pytest.fixture
def containers_removed(engine: DockerEngine, azure: Azure) -> Iterator[None]:
    yield
    for info in engine.dstream_containers():
        if (info.get("Labels") or {}).get("io.dstream.task", "").startswith(azure.prefix):
            engine.remove(info["Id"])


TASKS = """
task "{p}-produce" {{
  input {{
    provider_ref = "{counter}"
    config {{
      interval          = 0
      max_count         = {total}
      include_timestamp = false
      checkpoint_every  = 100
    }}
  }}
  output {{
    provider_ref = "{queue_out}"
    config {{
      connection_string     = env("DSTREAM_TEST_AZURE")
      tables                = ["dbo.Counts"]
      default_table         = "dbo.Counts"
      queue_name_pattern    = "{p}-{{table}}"
      envelopes_per_message = 10
    }}
    container {{ network = "host" }}
  }}
}}
task "{p}-consume" {{
  input {{
    provider_ref = "{queue_in}"
    config {{
      connection_string = env("DSTREAM_TEST_AZURE")
      queue             = "{p}-counts"
      max_idle          = "2s"
    }}
    container {{ network = "host" }}
  }}
  output {{
    provider_ref = "{console}"
    config {{ outputFormat = "jsonl" }}
  }}
}}
"""


def test_queue_chain_and_lifecycle_with_the_providers_in_containers(
    azure: Azure,
    azure_images: dict[str, str],
    engine: DockerEngine,
    containers_removed: None,
    task_file: Callable[..., Path],
) -> None:
    p, total = azure.prefix, 3000
    hcl = task_file(
        TASKS.format(
            p=p,
            total=total,
            counter=azure_images["counter-input-provider"],
            console=azure_images["console-output-provider"],
            queue_out=azure_images["azure-queue-output-provider"],
            queue_in=azure_images["azure-queue-input-provider"],
        )
    )
    queue = f"{p}-counts"
    assert by_name(lifecycle("plan", f"{p}-produce", hcl)) == {queue: ("create", "absent")}
    assert by_name(lifecycle("init", f"{p}-produce", hcl)) == {queue: ("create", "present")}
    assert azure.queue_names() == {queue}

    produced = run_cli("run", f"{p}-produce", "-f", str(hcl))
    assert produced.returncode == 0, produced.stderr
    assert total // 10 <= azure.count(queue) < total // 5  # up to ten envelopes per message
    consumed = run_cli("run", f"{p}-consume", "-f", str(hcl))
    assert consumed.returncode == 0, consumed.stderr
    values = [json.loads(line)["data"]["value"] for line in consumed.stdout.splitlines()]
    assert sorted(values) == list(range(1, total + 1))  # each once (Storage queues are not strictly FIFO)
    assert azure.count(queue) == 0
    assert engine.dstream_containers(f"{p}-consume") == []  # removed when the run ended
    assert azure.connection_string not in consumed.stderr

    assert by_name(lifecycle("destroy", f"{p}-produce", hcl)) == {queue: ("delete", "absent")}
    assert azure.queue_names() == set()

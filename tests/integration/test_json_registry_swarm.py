"""``--json`` of the commands that need the registry (``lock``) or Swarm (``deploy --list``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine


def test_lock_json(task_file: Callable[..., Path], provider_images: dict[str, str]) -> None:
    counter = provider_images["counter-input-provider"]
    path = task_file(
        f"""
        task "t" {{
          input {{ provider_ref = "{counter}" }}
          transform {{ provider_ref = "{provider_images["console-output-provider"]}" }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """
    )
    result = run_cli("lock", "-f", str(path), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["lock_file"] == str(path.parent / "dstream.lock")
    rows = {row["ref"]: row for row in doc["providers"]}
    assert rows.keys() == {counter, provider_images["console-output-provider"]}  # transforms are locked too
    assert all(row["change"] == "new" and row["digest"].startswith("sha256:") for row in rows.values())
    again = json.loads(run_cli("lock", "-f", str(path), "--json").stdout)
    assert {row["change"] for row in again["providers"]} == {"unchanged"}


@pytest.fixture
def swarm(engine: DockerEngine) -> None:
    if engine.client.info().get("Swarm", {}).get("LocalNodeState") != "active":
        engine.client.swarm.init(advertise_addr="127.0.0.1")


def test_deploy_list_json(swarm: None, engine: DockerEngine, provider_images: dict[str, str], task_name: str) -> None:
    from docker.types import ServiceMode

    from dstream.runtime.leftovers import LABEL_DEPLOY

    # A service as deploy labels it, with no replica to start: what --list reads.
    service = engine.client.services.create(
        provider_images["counter-input-provider"],
        name=f"dstream-{task_name}",
        labels={LABEL_DEPLOY: task_name},
        mode=ServiceMode("replicated", replicas=0),
    )
    try:
        result = run_cli("deploy", "--list", "--json")
        assert result.returncode == 0, result.stderr
        rows = {row["task"]: row for row in json.loads(result.stdout)["deployments"]}
        row = rows[task_name]
        assert row.keys() == {"task", "service", "image", "running", "desired", "created"}
        assert (row["service"], row["running"], row["desired"]) == (f"dstream-{task_name}", 0, 0)
        assert row["image"] == provider_images["counter-input-provider"]
    finally:
        service.remove()

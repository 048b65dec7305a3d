"""Nothing removes what it does not own (security review row 6), on a real engine and Swarm:
a live run's provider containers survive ``undeploy`` of a deployment of the same task name
and the leftover cleanup of another dstream; two odd task names deploy side by side."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_cli
from tests.faults import finish, wait_until
from tests.integration.conftest import task_containers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine


@pytest.fixture
def task_name(engine: DockerEngine) -> Iterator[str]:
    """Not ``it-…``: the suite's autouse clean-up removes every ``it-`` container after each
    test, and on a shared engine another session's would remove this test's live run."""
    name = f"own-{uuid.uuid4().hex[:8]}"
    yield name
    for info in engine.dstream_containers(name):
        engine.remove(info["Id"])


@pytest.fixture(scope="module")
def swarm(engine: DockerEngine) -> None:
    if engine.swarm_state() != "active":  # as tests/integration/test_swarm.py does
        engine.client.swarm.init(advertise_addr="127.0.0.1")


@pytest.fixture(scope="module")
def orchestrator(engine: DockerEngine, registry: str, provider_images: dict[str, str]) -> str:
    from dstream.tooling.images import Builder, orchestrator_image

    ref = orchestrator_image(registry)
    if engine.image(ref) is None:
        Builder(engine).push_orchestrator(registry)
    return ref


def _endless(task_file: Callable[..., Path], name: str, images: dict[str, str], folder: str) -> Path:
    return task_file(
        f"""
        task "{name}" {{
          input {{
            provider_ref = "{images["counter-input-provider"]}"
            config {{
              interval = 50
              max_count = 0
            }}
          }}
          output {{ provider_ref = "{images["console-output-provider"]}" }}
        }}
        """,
        name=f"{folder}.hcl",
    )


@pytest.fixture
def live_run(
    task_file: Callable[..., Path], provider_images: dict[str, str], task_name: str, engine: DockerEngine
) -> Iterator[subprocess.Popen[bytes]]:
    """``dstream run`` of an endless task, as a dstream in a container would run it (an owner
    named by a host name the engine does not know: a Kubernetes pod, ``docker run --hostname``,
    the host network); its two provider containers are up when this yields."""
    hcl = _endless(task_file, task_name, provider_images, "live")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", task_name, "-f", str(hcl)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "DSTREAM_IN_CONTAINER": "1"},
    )
    try:
        wait_until(lambda: len(_running(engine, task_name)) == 2, "the live run's providers", proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        finish(proc)


def _running(engine: DockerEngine, task: str) -> list[str]:
    return sorted(str(c["Id"]) for c in task_containers(engine, task) if c["State"] == "running")


def test_a_live_run_survives_another_dstream_s_leftover_cleanup(
    live_run: subprocess.Popen[bytes],
    task_file: Callable[..., Path],
    provider_images: dict[str, str],
    engine: DockerEngine,
    task_name: str,
) -> None:
    """Another task file with the same task name starts a run: its start-up cleanup must not
    take the live run's providers for leftovers (a534dc5 removed them: the owner name did not
    resolve to a container, and an unresolved owner counted as dead)."""
    mine = _running(engine, task_name)
    other = task_file(
        f"""
        task "{task_name}" {{
          input {{
            provider_ref = "{provider_images["counter-input-provider"]}"
            config {{
              interval = 1
              max_count = 3
            }}
          }}
          output {{ provider_ref = "{provider_images["console-output-provider"]}" }}
        }}
        """,
        name="other.hcl",
    )
    result = run_cli("run", task_name, "-f", str(other), timeout=180)
    assert result.returncode == 0, result.stderr
    assert "left behind" not in result.stderr
    assert set(mine) <= set(_running(engine, task_name))
    assert live_run.poll() is None


def test_a_live_run_survives_undeploy_of_a_same_named_deployment(
    live_run: subprocess.Popen[bytes],
    task_file: Callable[..., Path],
    tmp_path: Path,
    engine: DockerEngine,
    swarm: None,
    orchestrator: str,
    task_name: str,
) -> None:
    """``undeploy`` removes its service, the providers *its replicas* started, its configs and
    secrets, and nothing else (a534dc5 removed every container labelled with the task name)."""
    mine = _running(engine, task_name)
    deployed_file = task_file(
        f"""
        task "{task_name}" {{
          input {{
            provider_path = "counter-input-provider"
            config {{ interval = 200 }}
          }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """,
        name="deployed.hcl",
    )
    deployed = run_cli(
        "deploy", task_name, "-f", str(deployed_file), "--image", orchestrator, "--state-dir", str(tmp_path / "st")
    )
    assert deployed.returncode == 0, deployed.stderr
    (service,) = engine.client.api.services(filters={"name": f"dstream-{task_name}"})
    # A provider container one of the service's replicas started (labelled as owner_labels does).
    replica_provider = engine.client.api.create_container(
        orchestrator,
        command=["--version"],
        labels={"io.dstream.task": task_name, "io.dstream.deploy-id": service["ID"]},
    )["Id"]
    removed = run_cli("undeploy", task_name)
    assert removed.returncode == 0, removed.stderr
    assert "1 leftover container(s)" in removed.stdout
    assert engine.client.api.services(filters={"name": f"dstream-{task_name}"}) == []
    assert not engine.client.api.containers(all=True, filters={"id": replica_provider})  # removed
    assert _running(engine, task_name) == mine  # the live run's providers are untouched
    assert live_run.poll() is None
    again = run_cli("undeploy", task_name)
    assert again.returncode == 1
    assert "is not deployed" in again.stderr
    assert _running(engine, task_name) == mine


def test_two_odd_task_names_deploy_side_by_side(
    task_file: Callable[..., Path], tmp_path: Path, engine: DockerEngine, swarm: None, orchestrator: str, task_name: str
) -> None:
    """``orders/eu`` and ``orders?eu`` both became ``dstream-orders-eu``: the second deploy failed
    as "already deployed". Long names made config names of 75 characters, over Swarm's 64."""
    names = [f"{task_name}/orders/eu", f"{task_name}?orders?eu", f"{task_name}-" + "x" * 80]
    blocks = "".join(
        f"""
        task "{name}" {{
          input {{
            provider_path = "counter-input-provider"
            config {{ interval = 200 }}
          }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """
        for name in names
    )
    hcl = task_file(blocks, name="odd.hcl")
    try:
        for index, name in enumerate(names):
            result = run_cli(
                "deploy", name, "-f", str(hcl), "--image", orchestrator, "--state-dir", str(tmp_path / str(index))
            )
            assert result.returncode == 0, result.stderr
        listed = {str(row["task"]) for row in _deployments()}
        assert set(names) <= listed
        services = {s["Spec"]["Name"] for s in engine.services(label="io.dstream.deploy")}
        assert len(services & {_service(n) for n in names}) == 3
    finally:
        for name in names:
            run_cli("undeploy", name)
    assert not any(row["task"] in names for row in _deployments())


def _service(name: str) -> str:
    from dstream.tooling.deploy import service_name

    return service_name(name)


def _deployments() -> list[dict[str, str | int]]:
    from dstream.tooling.deploy import deployments

    return deployments()

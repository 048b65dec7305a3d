"""`dstream deploy` on a real single-node Docker Swarm: two replicas, one killed, nothing lost."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import yaml

from tests.conftest import run_cli
from tests.faults import line_count, read_output, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from dstream.runtime.docker import DockerEngine

TOTAL = 6000


@pytest.fixture(scope="session")
def swarm(engine: DockerEngine) -> None:
    if engine.client.info().get("Swarm", {}).get("LocalNodeState") != "active":
        engine.client.swarm.init(advertise_addr="127.0.0.1")


@pytest.fixture(scope="session")
def orchestrator_image(engine: DockerEngine, registry: str, provider_images: dict[str, str]) -> str:
    from dstream.tooling.images import Builder, orchestrator_image

    ref = orchestrator_image(registry)
    if engine.image(ref) is None:
        Builder(engine).push_orchestrator(registry)
    return ref


def _labelled(engine: DockerEngine, label: str) -> list[dict[str, object]]:
    return list(engine.client.api.containers(all=True, filters={"label": label}))


def test_deploy_two_replicas_kill_the_active_one_lose_nothing_undeploy_cleanly(
    task_file: Callable[..., Path],
    tmp_path: Path,
    engine: DockerEngine,
    swarm: None,
    registry: str,
    provider_images: dict[str, str],
    orchestrator_image: str,
    task_name: str,
) -> None:
    from dstream.tooling.images import Builder

    file_image = f"{registry}/dstream/file-output-provider:0.1.0"
    if engine.image(file_image) is None:
        Builder(engine).push("file-output-provider", registry)
    outdir = tmp_path / "out"
    outdir.mkdir()
    outdir.chmod(0o777)
    hcl = task_file(
        f"""
        task "{task_name}" {{
          lease {{
            backend  = "file"
            duration = "3s"
          }}
          input {{
            provider_ref = "{provider_images["counter-input-provider"]}"
            config {{
              interval = 2
              max_count = {TOTAL}
              include_timestamp = false
              checkpoint_every = 20
            }}
          }}
          output {{
            provider_ref = "{file_image}"
            config {{ path = "{{{{ env \\"OUT_PATH\\" }}}}" }}
            container {{ mounts = ["{outdir}:/out"] }}
          }}
        }}
        """
    )
    out = outdir / "out.jsonl"
    state_dir = tmp_path / "state"
    deployed = run_cli(
        "deploy", task_name, "-f", str(hcl), "--replicas", "2", "--image", orchestrator_image,
        "--state-dir", str(state_dir), env={"OUT_PATH": "/out/out.jsonl"},
    )  # fmt: skip
    try:
        assert deployed.returncode == 0, deployed.stderr
        assert "secrets passed as Swarm secrets: OUT_PATH" in deployed.stderr
        (service,) = engine.client.services.list(filters={"label": f"io.dstream.deploy={task_name}"})
        files = [ref["File"] for ref in service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"]]
        # Root's alone: a pulled executable run as an unprivileged uid cannot read them.
        assert [(f["UID"], f["Mode"]) for f in files] == [("0", 0o400)] * len(files)
        listed = run_cli("deploy", "--list", env={"COLUMNS": "200"})
        assert f"dstream-{task_name}" in listed.stdout
        wait_until(lambda: line_count(out) >= 1000, "the active replica to relay")
        # The active replica is the orchestrator that owns the provider containers.
        providers = [c for c in _labelled(engine, f"io.dstream.task={task_name}") if c["State"] == "running"]
        owners = {c["Labels"]["io.dstream.owner-container"] for c in providers}  # type: ignore[index]
        assert len(owners) == 1, owners
        (active,) = owners
        slot = active.split(".")[1]
        engine.client.api.kill(active, "SIGKILL")
        # The standby takes over, and Swarm restarts the killed replica.
        wait_until(lambda: len(set(read_output(out).values)) == TOTAL, "every envelope to be delivered")
        service = engine.client.services.get(f"dstream-{task_name}")
        wait_until(
            lambda: sum(1 for t in service.tasks() if str(t["Slot"]) == slot) >= 2,
            "Swarm to restart the killed replica",
        )
    finally:
        removed = run_cli("undeploy", task_name)
    assert removed.returncode == 0, removed.stderr
    delivery = read_output(out)
    assert delivery.missing == []
    assert max(delivery.values) == TOTAL
    assert engine.client.services.list(filters={"name": f"dstream-{task_name}"}) == []
    assert _labelled(engine, f"io.dstream.task={task_name}") == []
    assert _labelled(engine, f"com.docker.swarm.service.name=dstream-{task_name}") == []
    assert engine.client.configs.list(filters={"label": f"io.dstream.deploy={task_name}"}) == []
    assert engine.client.secrets.list(filters={"label": f"io.dstream.deploy={task_name}"}) == []


def test_deploy_refuses_replicas_without_a_lease_and_prints_kubernetes(
    task_file: Callable[..., Path], swarm: None, task_name: str
) -> None:
    hcl = task_file(
        f"""
        task "{task_name}" {{
          input {{ provider_path = "counter-input-provider" }}
          output {{ provider_path = "console-output-provider" }}
        }}
        """
    )
    refused = run_cli("deploy", task_name, "-f", str(hcl), "--replicas", "2")
    assert refused.returncode == 1
    assert "need a lease block" in refused.stderr
    manifests = run_cli("deploy", task_name, "-f", str(hcl), "--print", "kubernetes")
    assert manifests.returncode == 0, manifests.stderr
    assert "kind: Deployment" in manifests.stdout
    deployment = next(d for d in yaml.safe_load_all(manifests.stdout) if d and d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["run", task_name, "-f", "/etc/dstream/dstream.hcl"]

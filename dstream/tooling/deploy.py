"""``dstream deploy``: run a task as a Docker Swarm service of dstream orchestrators.

Each replica is a container of the dstream image running ``dstream run TASK``. The task
file becomes a Swarm config (``/etc/dstream/dstream.hcl``), every environment variable
the file reads becomes a Swarm secret (a file in ``/run/secrets``, loaded back into the
environment at start), and the Docker socket is mounted into the orchestrator only —
providers never get it. With ``--replicas 2`` or more, the task's ``lease`` block makes
one replica active and the others standbys; Swarm restarts a replica that dies.

``--print kubernetes`` prints equivalent manifests instead (:mod:`dstream.tooling.kubernetes`).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dstream import log
from dstream.errors import ConfigError, DStreamError, RuntimeFailure
from dstream.names import digest, resource_name, swarm_object_name
from dstream.runtime.base import LABEL_TASK
from dstream.runtime.docker import DockerEngine
from dstream.runtime.leftovers import LABEL_DEPLOY, LABEL_DEPLOY_ID, LABEL_OWNER
from dstream.runtime.swarm import Swarm
from dstream.tooling.kubernetes import CONFIG_TARGET, STATE_TARGET
from dstream.tooling.literals import move_literal_secrets

if TYPE_CHECKING:
    from dstream.config.models import Document

_log = log.get("deploy")
DEFAULT_STATE_ROOT = Path("/var/lib/dstream/deploy")


def service_name(task: str) -> str:
    """The Swarm service of a task: the same sanitiser as the Kubernetes names."""
    return resource_name(task)


@dataclass
class Deployed:
    service: str
    image: str
    replicas: int
    state_dir: Path
    secrets: list[str]


def deploy(
    document: Document,
    task_name: str,
    replicas: int,
    image: str,
    network: str | None = "host",
    state_dir: Path | None = None,
) -> Deployed:
    task = document.task(task_name)
    if replicas < 1:
        raise ConfigError("--replicas must be at least 1")
    if replicas > 1 and task.lease is None:
        raise ConfigError(
            f"task {task_name}: {replicas} replicas need a lease block (lease {{ backend = ... }}) so that "
            f"only one of them runs the providers at a time"
        )
    text, moved = move_literal_secrets(document)  # before anything is created: it may refuse
    swarm = Swarm(DockerEngine())
    swarm.ensure_active()
    name = service_name(task_name)
    if swarm.service(name) is not None:
        raise DStreamError(
            f"task {task_name} is already deployed as service {name}; `dstream undeploy {task_name}` first"
        )
    if task.lease is not None and task.lease.backend == "file" and swarm.nodes() > 1:
        _log.warning('a file lease only works when every replica runs on the same node; use backend = "azure_blob"')
    labels = {LABEL_DEPLOY: task_name}
    data = text.encode()
    config_name = swarm_object_name(name, "hcl", digest(name + "\0" + text, 12))
    config_id = swarm.create_config(config_name, data, labels)
    values = {var: os.environ[var] for var in sorted(document.env_names) if var in os.environ}
    secrets = []
    for var, value in {**values, **moved}.items():  # a variable read with a default and not set is skipped
        secret = swarm_object_name(name, var.lower().replace("_", "-"), uuid.uuid4().hex[:8])
        secrets.append((swarm.create_secret(secret, value.encode(), labels), secret, var))
    secret_names = [var for _, _, var in secrets]
    host_state = state_dir or DEFAULT_STATE_ROOT / task_name
    host_state.mkdir(parents=True, exist_ok=True)
    service_id = swarm.create_service(
        name=name,
        image=image,
        args=["run", task_name, "-f", CONFIG_TARGET],
        replicas=replicas,
        labels=labels,
        env={
            "DSTREAM_STATE_DIR": STATE_TARGET,
            "DSTREAM_SECRETS_DIR": "/run/secrets",
            # Swarm fills the templates in: provider containers name their orchestrator and its
            # service, so undeploy removes this service's providers and nobody else's.
            "DSTREAM_OWNER_CONTAINER": "{{.Service.Name}}.{{.Task.Slot}}.{{.Task.ID}}",
            "DSTREAM_DEPLOY_ID": "{{.Service.ID}}",
        },
        mounts=["/var/run/docker.sock:/var/run/docker.sock:rw", f"{host_state}:{STATE_TARGET}:rw"],
        configs=[(config_id, config_name, CONFIG_TARGET)],
        secrets=secrets,
        network=network,
    )
    _log.info("deployed task %s as service %s (%s, %d replica(s))", task_name, name, service_id[:12], replicas)
    return Deployed(name, image, replicas, host_state, secret_names)


def deployments() -> list[dict[str, str | int]]:
    """Deployed tasks: ``task``, ``service``, ``image``, ``running``/``desired`` replicas, ``created``."""
    swarm = Swarm(DockerEngine())
    swarm.ensure_active()
    rows = []
    for attrs in swarm.services():
        spec = attrs["Spec"]
        desired = spec["Mode"].get("Replicated", {}).get("Replicas", 0)
        rows.append(
            {
                "task": (spec.get("Labels") or {}).get(LABEL_DEPLOY, "?"),
                "service": spec["Name"],
                "image": spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0],
                "running": swarm.running_tasks(attrs["ID"]),
                "desired": int(desired),
                "created": attrs.get("CreatedAt", "")[:19],
            }
        )
    return rows


def undeploy(task_name: str, timeout: float = 90) -> dict[str, int]:
    """Remove the service, wait for its replicas, then the provider containers *its* replicas
    started (labelled with the service id), its configs and its secrets. Containers of any
    other run of a task with the same name (a developer's, another file's) are not touched."""
    swarm = Swarm(DockerEngine())
    swarm.ensure_active()
    name = service_name(task_name)
    service = swarm.service(name)
    if service is not None and (service["Spec"].get("Labels") or {}).get(LABEL_DEPLOY) != task_name:
        raise DStreamError(f"service {name} was not created by `dstream deploy {task_name}`; not removing it")
    service_id = str(service["ID"]) if service is not None else None
    removed = 0
    if service_id is not None:
        # The replicas' container names, as DSTREAM_OWNER_CONTAINER labels their providers
        # (also on providers started by an older dstream, which set no deploy id).
        replicas = swarm.replica_names(service_id, name)
        swarm.remove_service(service_id)
        deadline = time.monotonic() + timeout
        while swarm.containers(f"com.docker.swarm.service.id={service_id}"):
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"the containers of service {name} did not stop within {timeout:g}s")
            time.sleep(0.5)  # polling the engine for the replicas to exit
        mine = set(swarm.containers(f"{LABEL_DEPLOY_ID}={service_id}"))
        mine |= {c["Id"] for c in swarm.engine.containers(LABEL_OWNER) if c["Labels"].get(LABEL_OWNER) in replicas}
        for container_id in sorted(mine):
            swarm.engine.remove(container_id)
        removed = len(mine)
    # Providers of an earlier deployment of this task whose service is gone (an undeploy that
    # was interrupted): labelled with a deploy id that names no service any more.
    services = {str(s["ID"]) for s in swarm.services()}
    for info in swarm.engine.containers(LABEL_DEPLOY_ID, f"{LABEL_TASK}={task_name}"):
        if info["Labels"][LABEL_DEPLOY_ID] not in services:
            swarm.engine.remove(info["Id"])
            removed += 1
    configs, secrets = swarm.remove_labelled(f"{LABEL_DEPLOY}={task_name}")
    if service is None and not (configs or secrets or removed):
        raise DStreamError(f"task {task_name} is not deployed (no Swarm service {name})")
    return {"services": int(service is not None), "containers": removed, "configs": configs, "secrets": secrets}

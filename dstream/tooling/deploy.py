"""``dstream deploy``: run a task as a Docker Swarm service of dstream orchestrators.

Each replica is a container of the dstream image running ``dstream run TASK``. The task
file becomes a Swarm config (``/etc/dstream/dstream.hcl``), every environment variable
the file reads becomes a Swarm secret (a file in ``/run/secrets``, loaded back into the
environment at start), and the Docker socket is mounted into the orchestrator only —
providers never get it. With ``--replicas 2`` or more, the task's ``lease`` block makes
one replica active and the others standbys; Swarm restarts a replica that dies.

``--print kubernetes`` writes equivalent manifests instead (documented, not tested here).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dstream import log
from dstream.errors import ConfigError, DStreamError, RuntimeFailure
from dstream.runtime.docker import DockerEngine
from dstream.runtime.leftovers import LABEL_DEPLOY
from dstream.runtime.swarm import Swarm

if TYPE_CHECKING:
    from dstream.config.models import Document

_log = log.get("deploy")
CONFIG_TARGET = "/etc/dstream/dstream.hcl"
STATE_TARGET = "/var/lib/dstream/state"
DEFAULT_STATE_ROOT = Path("/var/lib/dstream/deploy")


def service_name(task: str) -> str:
    return "dstream-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", task)[:50]


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
    engine = DockerEngine()
    swarm = Swarm(engine)
    swarm.ensure_active()
    name = service_name(task_name)
    if swarm.service(name) is not None:
        raise DStreamError(
            f"task {task_name} is already deployed as service {name}; `dstream undeploy {task_name}` first"
        )
    if task.lease is not None and task.lease.backend == "file" and len(engine.client.nodes.list()) > 1:
        _log.warning('a file lease only works when every replica runs on the same node; use backend = "azure_blob"')
    labels = {LABEL_DEPLOY: task_name}
    text = document.path.read_bytes()
    config_name = f"{name}-hcl-{hashlib.sha256(text).hexdigest()[:12]}"
    config_id = swarm.create_config(config_name, text, labels)
    secrets = []
    secret_names = []
    for var in sorted(document.env_names):
        value = os.environ.get(var)
        if value is None:
            continue  # read with a default the file already applied
        secret = f"{name}-{var.lower().replace('_', '-')}-{uuid.uuid4().hex[:8]}"
        secrets.append((swarm.create_secret(secret, value.encode(), labels), secret, var))
        secret_names.append(var)
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
            # Swarm fills the template in: provider containers name their orchestrator.
            "DSTREAM_OWNER_CONTAINER": "{{.Service.Name}}.{{.Task.Slot}}.{{.Task.ID}}",
        },
        mounts=["/var/run/docker.sock:/var/run/docker.sock:rw", f"{host_state}:{STATE_TARGET}:rw"],
        configs=[(config_id, config_name, CONFIG_TARGET)],
        secrets=secrets,
        network=network,
    )
    _log.info("deployed task %s as service %s (%s, %d replica(s))", task_name, name, service_id[:12], replicas)
    return Deployed(name, image, replicas, host_state, secret_names)


def deployments() -> list[dict[str, str]]:
    swarm = Swarm(DockerEngine())
    swarm.ensure_active()
    rows = []
    for service in swarm.services():
        attrs = service.attrs
        desired = attrs["Spec"]["Mode"].get("Replicated", {}).get("Replicas", 0)
        running = sum(1 for t in service.tasks() if t["Status"]["State"] == "running")
        rows.append(
            {
                "task": attrs["Spec"]["Labels"].get(LABEL_DEPLOY, "?"),
                "service": service.name,
                "image": attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0],
                "replicas": f"{running}/{desired}",
                "created": attrs.get("CreatedAt", "")[:19],
            }
        )
    return rows


def undeploy(task_name: str, timeout: float = 90) -> dict[str, int]:
    """Remove the service, wait for its containers, then its configs, secrets and leftovers."""
    engine = DockerEngine()
    swarm = Swarm(engine)
    swarm.ensure_active()
    name = service_name(task_name)
    service = swarm.service(name)
    if service is not None:
        service.remove()
    deadline = time.monotonic() + timeout
    while swarm.containers(f"com.docker.swarm.service.name={name}"):
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"the containers of service {name} did not stop within {timeout:g}s")
        time.sleep(0.5)  # polling the engine for the replicas to exit
    leftovers = [c["Id"] for c in engine.dstream_containers(task_name)]
    for container_id in leftovers:
        engine.remove(container_id)
    configs, secrets = swarm.remove_labelled(f"{LABEL_DEPLOY}={task_name}")
    if service is None and not (leftovers or configs or secrets):
        raise DStreamError(f"task {task_name} is not deployed")
    return {"services": int(service is not None), "containers": len(leftovers), "configs": configs, "secrets": secrets}


def kubernetes_manifests(document: Document, task_name: str, replicas: int, image: str) -> str:
    """Equivalent Kubernetes manifests: a ConfigMap, a Secret to fill in, a Deployment.

    Providers run on the node's Docker engine through its socket (a Docker-based node, or
    a Docker-in-Docker sidecar); the secret values are not printed: fill them in.
    """
    task = document.task(task_name)
    name = service_name(task_name)
    text = document.path.read_text()
    indented = "\n".join("    " + line for line in text.splitlines())
    secret_lines = "\n".join(f'  {var}: "<set me>"' for var in sorted(document.env_names)) or "  {}"
    lease_note = "" if task.lease or replicas == 1 else "  # WARNING: replicas > 1 need a lease block in the task\n"
    return f"""# dstream task {task_name}: kubectl apply -f this file (fill in the Secret first)
apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
  labels: {{app.kubernetes.io/name: dstream, io.dstream.deploy: "{task_name}"}}
data:
  dstream.hcl: |
{indented}
---
apiVersion: v1
kind: Secret
metadata:
  name: {name}
  labels: {{app.kubernetes.io/name: dstream, io.dstream.deploy: "{task_name}"}}
type: Opaque
stringData:
{secret_lines}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app.kubernetes.io/name: dstream, io.dstream.deploy: "{task_name}"}}
spec:
{lease_note}  replicas: {replicas}
  selector:
    matchLabels: {{io.dstream.deploy: "{task_name}"}}
  template:
    metadata:
      labels: {{app.kubernetes.io/name: dstream, io.dstream.deploy: "{task_name}"}}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
        - name: dstream
          image: {image}
          args: ["run", "{task_name}", "-f", "{CONFIG_TARGET}"]
          env:
            - {{name: DSTREAM_SECRETS_DIR, value: /run/secrets}}
            - {{name: DSTREAM_STATE_DIR, value: {STATE_TARGET}}}
          volumeMounts:
            - {{name: task, mountPath: /etc/dstream, readOnly: true}}
            - {{name: secrets, mountPath: /run/secrets, readOnly: true}}
            - {{name: docker, mountPath: /var/run/docker.sock}}
            - {{name: state, mountPath: {STATE_TARGET}}}
      volumes:
        - {{name: task, configMap: {{name: {name}}}}}
        - {{name: secrets, secret: {{secretName: {name}}}}}
        - {{name: docker, hostPath: {{path: /var/run/docker.sock, type: Socket}}}}
        # Shared state: use state {{ backend = "azure_blob" }} and lease {{ backend = "azure_blob" }}
        # when replicas can land on different nodes; this emptyDir is per pod.
        - {{name: state, emptyDir: {{}}}}
"""

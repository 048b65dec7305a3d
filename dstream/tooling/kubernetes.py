"""``dstream deploy TASK --print kubernetes``: the Swarm layout as Kubernetes manifests.

A ConfigMap (the task file, its literal secrets moved out: :mod:`~dstream.tooling.literals`),
a Secret (one key per environment variable the file reads, values to fill in, and the moved
literals), a PersistentVolumeClaim for SQLite state and file leases (none when state is in
Azure Blob: never an ``emptyDir``, which a reschedule loses) and a Deployment of dstream
orchestrators that run the providers on the node's Docker engine through its socket. More
than one replica needs an ``azure_blob`` lease. The manifests are built as data and dumped
with PyYAML, so any task name or file content comes out as valid YAML.

Names and label values come from :mod:`dstream.names`; the real task name stays in the
``io.dstream/task`` annotation and in the command line.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from dstream.errors import ConfigError
from dstream.names import label_value, resource_name
from dstream.tooling.literals import PREFIX as LITERAL_PREFIX
from dstream.tooling.literals import move_literal_secrets

if TYPE_CHECKING:
    from dstream.config.models import Document, Task

__all__ = ["label_value", "manifests", "render", "resource_name"]

CONFIG_TARGET = "/etc/dstream/dstream.hcl"
STATE_TARGET = "/var/lib/dstream/state"
LABEL_KEY = "io.dstream.deploy"
ANNOTATION = "io.dstream/task"
STATE_SIZE = "1Gi"
# Where the orchestrator finds its own pod: provider containers are labelled with it, so a
# leftover check on the node never takes a live pod's providers for leftovers.
_DOWNWARD = {
    "DSTREAM_OWNER_POD": "metadata.name",
    "DSTREAM_OWNER_POD_NAMESPACE": "metadata.namespace",
    "DSTREAM_OWNER_POD_UID": "metadata.uid",
}


def check_replicas(task: Task, replicas: int) -> None:
    """More than one replica needs a lease all of them see: a file lease lives in each
    pod's own volume, so every pod would hold one and all would be active."""
    if replicas < 1:
        raise ConfigError("--replicas must be at least 1")
    if replicas > 1 and (task.lease is None or task.lease.backend != "azure_blob"):
        raise ConfigError(
            f'task {task.name}: {replicas} replicas on Kubernetes need lease {{ backend = "azure_blob" }} '
            f"(a file lease is per pod, so every replica would run the providers); use --replicas 1 or add one"
        )


def _shared_state(document: Document) -> bool:
    return document.state.backend == "azure_blob"


def manifests(document: Document, task_name: str, replicas: int, image: str) -> list[dict[str, Any]]:
    """The ConfigMap, Secret, state PersistentVolumeClaim (unless state is in Azure Blob)
    and Deployment for one task, as Kubernetes API objects."""
    task = document.task(task_name)
    check_replicas(task, replicas)
    text, moved = move_literal_secrets(document)
    name = resource_name(task_name)
    labels = {"app.kubernetes.io/name": "dstream", LABEL_KEY: label_value(task_name)}

    def metadata(suffix: str = "") -> dict[str, Any]:
        return {"name": name + suffix, "labels": dict(labels), "annotations": {ANNOTATION: task_name}}

    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(), "data": {"dstream.hcl": text}}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(),
        "type": "Opaque",
        "stringData": {**dict.fromkeys(sorted(document.env_names), "<set me>"), **moved},
    }
    env: list[dict[str, Any]] = [
        {"name": "DSTREAM_SECRETS_DIR", "value": "/run/secrets"},
        {"name": "DSTREAM_STATE_DIR", "value": STATE_TARGET},
        *({"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}} for var, path in _DOWNWARD.items()),
    ]
    mounts = [
        {"name": "task", "mountPath": "/etc/dstream", "readOnly": True},
        {"name": "secrets", "mountPath": "/run/secrets", "readOnly": True},
        {"name": "docker", "mountPath": "/var/run/docker.sock"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "task", "configMap": {"name": name}},
        # 0400 (Kubernetes' default is 0644): readable by the orchestrator (root), not by a pulled
        # executable it runs as an unprivileged uid.
        {"name": "secrets", "secret": {"secretName": name, "defaultMode": 0o400}},
        {"name": "docker", "hostPath": {"path": "/var/run/docker.sock", "type": "Socket"}},
    ]
    objects: list[dict[str, Any]] = [config_map, secret]
    if not _shared_state(document):  # SQLite state and file leases: a claim that outlives the pod
        claim = name[: 63 - len("-state")] + "-state"
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {**metadata(), "name": claim},
                "spec": {
                    "accessModes": ["ReadWriteOnce" if replicas == 1 else "ReadWriteMany"],
                    "resources": {"requests": {"storage": STATE_SIZE}},
                },
            }
        )
        mounts.append({"name": "state", "mountPath": STATE_TARGET})
        volumes.append({"name": "state", "persistentVolumeClaim": {"claimName": claim}})
    container: dict[str, Any] = {"name": "dstream", "image": image, "args": ["run", task_name, "-f", CONFIG_TARGET]}
    container |= {"env": env, "volumeMounts": mounts}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(),
        "spec": {
            "replicas": replicas,
            # One pod at a time on a ReadWriteOnce claim; the lease keeps replicas apart anyway.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {LABEL_KEY: labels[LABEL_KEY]}},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {ANNOTATION: task_name}},
                "spec": {"terminationGracePeriodSeconds": 30, "containers": [container], "volumes": volumes},
            },
        },
    }
    return [*objects, deployment]


def render(document: Document, task_name: str, replicas: int, image: str) -> str:
    """The manifests as one YAML stream, ready for ``kubectl apply -f -``."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None  # the task file stays readable in the ConfigMap
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, text)
    objects = manifests(document, task_name, replicas, image)
    notes = [f"# dstream task {json.dumps(task_name)}: fill in the Secret, then kubectl apply -f this file"]
    moved = sorted(k for k in objects[1]["stringData"] if k.startswith(LITERAL_PREFIX))
    if moved:
        notes.append(f"# literal secrets of the task file moved into the Secret, read with env(): {', '.join(moved)}")
    if _shared_state(document):
        notes.append("# state: Azure Blob (state { backend = azure_blob }); the pods keep none of their own")
    else:
        access = "ReadWriteOnce" if replicas == 1 else "ReadWriteMany (a storage class that offers it)"
        notes.append(
            f"# state: SQLite on the PersistentVolumeClaim {objects[2]['metadata']['name']} ({access}), kept "
            f"when a pod is rescheduled; or share it: state {{ backend = azure_blob }}"
        )
    body = yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, explicit_start=True)
    return "\n".join(notes) + "\n" + body

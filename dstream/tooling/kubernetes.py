"""``dstream deploy TASK --print kubernetes``: the Swarm layout as Kubernetes manifests.

A ConfigMap (the task file), a Secret (one key per environment variable the file reads,
values to fill in) and a Deployment of dstream orchestrators that run the providers on the
node's Docker engine through its socket. The manifests are built as data and dumped with
PyYAML, so any task name or file content comes out as valid YAML.

Task names are free text in HCL ("My_Task: x"); Kubernetes names are DNS-1123 labels and
label values have rules of their own (kubernetes/apimachinery
``pkg/util/validation/validation.go`` ``IsDNS1123Label``, ``pkg/api/validate/content/kube.go``
``IsLabelValue``). Names and label values are sanitised to those rules, with a short hash
of the real name when sanitising changed it (so "My_Task" and "my-task" never collide);
the real name stays in the ``io.dstream/task`` annotation and in the command line.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dstream.config.models import Document

CONFIG_TARGET = "/etc/dstream/dstream.hcl"
STATE_TARGET = "/var/lib/dstream/state"
LABEL_KEY = "io.dstream.deploy"
ANNOTATION = "io.dstream/task"
_LABEL_MAX = 63  # DNS1123LabelMaxLength, LabelValueMaxLength


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def resource_name(task: str) -> str:
    """``dstream-<task>`` as a DNS-1123 label: lower case, ``[a-z0-9-]``, at most 63
    characters, starting and ending with a letter or digit."""
    wanted = f"dstream-{task}"
    cleaned = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", wanted.lower())).strip("-")
    if cleaned == wanted and len(cleaned) <= _LABEL_MAX:
        return cleaned
    suffix = "-" + _digest(task)
    return cleaned[: _LABEL_MAX - len(suffix)].rstrip("-") + suffix


def label_value(task: str) -> str:
    """The task name as a label value: ``[A-Za-z0-9_.-]``, at most 63 characters, starting
    and ending with a letter or digit (hash-suffixed when it had to change)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", task).strip("-_.")
    if cleaned == task and len(cleaned) <= _LABEL_MAX:
        return cleaned
    suffix = _digest(task)
    head = cleaned[: _LABEL_MAX - len(suffix) - 1].strip("-_.")
    return f"{head}-{suffix}" if head else suffix


def manifests(document: Document, task_name: str, replicas: int, image: str) -> list[dict[str, Any]]:
    """The ConfigMap, Secret and Deployment for one task, as Kubernetes API objects."""
    document.task(task_name)
    name = resource_name(task_name)
    labels = {"app.kubernetes.io/name": "dstream", LABEL_KEY: label_value(task_name)}

    def metadata() -> dict[str, Any]:
        return {"name": name, "labels": dict(labels), "annotations": {ANNOTATION: task_name}}

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(),
        "data": {"dstream.hcl": document.path.read_text()},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(),
        "type": "Opaque",
        "stringData": dict.fromkeys(sorted(document.env_names), "<set me>"),
    }
    container = {
        "name": "dstream",
        "image": image,
        "args": ["run", task_name, "-f", CONFIG_TARGET],
        "env": [
            {"name": "DSTREAM_SECRETS_DIR", "value": "/run/secrets"},
            {"name": "DSTREAM_STATE_DIR", "value": STATE_TARGET},
        ],
        "volumeMounts": [
            {"name": "task", "mountPath": "/etc/dstream", "readOnly": True},
            {"name": "secrets", "mountPath": "/run/secrets", "readOnly": True},
            {"name": "docker", "mountPath": "/var/run/docker.sock"},
            {"name": "state", "mountPath": STATE_TARGET},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {LABEL_KEY: labels[LABEL_KEY]}},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": {ANNOTATION: task_name}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [
                        {"name": "task", "configMap": {"name": name}},
                        {"name": "secrets", "secret": {"secretName": name}},
                        {"name": "docker", "hostPath": {"path": "/var/run/docker.sock", "type": "Socket"}},
                        # Per pod: use azure_blob state and leases when replicas can land on different nodes.
                        {"name": "state", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    return [config_map, secret, deployment]


def render(document: Document, task_name: str, replicas: int, image: str) -> str:
    """The manifests as one YAML stream, ready for ``kubectl apply -f -``."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None  # the task file stays readable in the ConfigMap
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, text)
    task = document.task(task_name)
    notes = [f"# dstream task {json.dumps(task_name)}: fill in the Secret, then kubectl apply -f this file"]
    if replicas > 1 and task.lease is None:
        notes.append("# WARNING: replicas > 1 need a lease block in the task (only one may run the providers)")
    notes.append("# Shared state across nodes: state { backend = azure_blob } and lease { backend = azure_blob }")
    body = yaml.dump_all(
        manifests(document, task_name, replicas, image), Dumper=_Dumper, sort_keys=False, explicit_start=True
    )
    return "\n".join(notes) + "\n" + body

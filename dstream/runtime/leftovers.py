"""Provider containers whose dstream process is gone (a ``kill -9``), and ``dstream ps`` rows.

Every provider container names its owner in labels (``runtime/container.py``
``owner_labels``). A container is a leftover only when its owner is *known* to be gone;
an owner that cannot be resolved is unknown, never dead, so its containers are left alone:

- a pod (Kubernetes; the manifest sets the pod from the downward API): alive while the
  engine runs a container of that pod uid (``io.kubernetes.pod.uid``, which kubelet's
  Docker runtime puts on a pod's containers), else unknown;
- a container (a Swarm replica, or dstream in ``docker run``): dead only when the engine
  has it and it is not running; unknown when the engine does not know the name;
- a process on this host: judged by pid and that process's start time (so a recycled pid
  never passes for it), in the same pid namespace only; another host's or another pid
  namespace's owner is unknown.

Each dstream process also labels its containers with an id of its own
(``io.dstream.instance``), which its reaper matches.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dstream.runtime import pids
from dstream.runtime.base import LABEL_ROLE, LABEL_RUN, LABEL_TASK

if TYPE_CHECKING:
    from dstream.runtime.docker import DockerEngine

LABEL_HOST = "io.dstream.host"
LABEL_PID = "io.dstream.pid"
LABEL_PID_STARTED = "io.dstream.pid-started"  # the owner's start time (Unix seconds)
LABEL_OWNER = "io.dstream.owner-container"  # set when dstream itself runs in a container
LABEL_DEPLOY = "io.dstream.deploy"
LABEL_DEPLOY_ID = "io.dstream.deploy-id"  # the Swarm service whose replica started the container
LABEL_OWNER_POD = "io.dstream.owner-pod"  # namespace/name of the orchestrator's pod
LABEL_OWNER_POD_UID = "io.dstream.owner-pod-uid"
LABEL_PID_NS = "io.dstream.pid-ns"  # the owner's pid namespace: its pid means nothing elsewhere
LABEL_INSTANCE = "io.dstream.instance"  # one id per dstream process
KUBERNETES_POD_UID = "io.kubernetes.pod.uid"
INSTANCE = uuid.uuid4().hex  # this dstream process


def pid_namespace() -> str:
    """This process's pid namespace (``pid:[4026531836]``); empty where /proc does not say."""
    try:
        return str(Path("/proc/self/ns/pid").readlink())
    except OSError:
        return ""


@dataclass(frozen=True)
class Leftover:
    container_id: str
    name: str
    run_id: str
    role: str
    running: bool


def owner_alive(labels: dict[str, str], engine: DockerEngine) -> bool | None:
    """Is the dstream that started this container still running? None: unknown (not ours
    to judge, or it cannot be resolved): never removed as a leftover."""
    pod_uid = labels.get(LABEL_OWNER_POD_UID)
    if pod_uid:
        pod = engine.containers(f"{KUBERNETES_POD_UID}={pod_uid}")
        return True if any(c.get("State") == "running" for c in pod) else None
    owner = labels.get(LABEL_OWNER)
    if owner:
        return engine.running(owner)
    if labels.get(LABEL_HOST) != socket.gethostname():
        return None  # another machine's run
    namespace = labels.get(LABEL_PID_NS)
    if namespace and namespace != pid_namespace():
        return None  # same host name, other pid namespace (a container on the host network)
    pid = int(labels.get(LABEL_PID) or 0)
    if not pid:
        return None
    started = labels.get(LABEL_PID_STARTED)
    if started:
        return pids.alive(pid, float(started))
    return pids.alive(pid) and _looks_like_dstream(pid)  # labelled by an older dstream


def _looks_like_dstream(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"dstream" in cmdline or b"pytest" in cmdline


def find_leftovers(engine: DockerEngine, task: str | None = None) -> list[Leftover]:
    """Containers of ``task`` (every task when None) whose dstream process is gone."""
    found = []
    for info in engine.dstream_containers(task):
        labels = info.get("Labels") or {}
        if owner_alive(labels, engine) is not False:
            continue
        name = (info.get("Names") or ["?"])[0].lstrip("/")
        running = str(info.get("State", "")) == "running"
        found.append(Leftover(info["Id"], name, labels.get(LABEL_RUN, "?"), labels.get(LABEL_ROLE, "?"), running))
    return found


def describe_containers(engine: DockerEngine) -> list[dict[str, str]]:
    """Rows for ``dstream ps``: every dstream container with its task, run and owner state."""
    rows = []
    for info in engine.dstream_containers():
        labels: dict[str, Any] = info.get("Labels") or {}
        alive = owner_alive(labels, engine)
        if labels.get(LABEL_OWNER_POD):
            owner = f"pod {labels[LABEL_OWNER_POD]}" + ("" if alive else " (unknown)")
        elif alive is None:
            owner = f"on {labels.get(LABEL_HOST, '?')} (unknown)"
        elif labels.get(LABEL_OWNER):
            owner = f"container {labels[LABEL_OWNER][:12]}" if alive else "gone (leftover)"
        else:
            owner = f"pid {labels.get(LABEL_PID)}" if alive else "gone (leftover)"
        rows.append(
            {
                "task": labels.get(LABEL_TASK, "?"),
                "run_id": labels.get(LABEL_RUN, "?"),
                "role": labels.get(LABEL_ROLE, "?"),
                "name": (info.get("Names") or ["?"])[0].lstrip("/"),
                "image": str(info.get("Image", "")),
                "status": str(info.get("Status", "")),
                "owner": owner,
            }
        )
    return sorted(rows, key=lambda r: (r["task"], r["run_id"], r["role"]))

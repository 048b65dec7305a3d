"""Provider containers whose dstream process is gone (a ``kill -9``), and ``dstream ps`` rows.

A dstream running on this host is judged by its pid and that process's start time (both
labelled on every container it starts, so a recycled pid never passes for it); one running
in a container (a deployed replica) by whether that container still runs. Containers of
another host are never judged here.
"""

from __future__ import annotations

import socket
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


@dataclass(frozen=True)
class Leftover:
    container_id: str
    name: str
    run_id: str
    role: str
    running: bool


def owner_alive(labels: dict[str, str], engine: DockerEngine) -> bool | None:
    """Is the dstream that started this container still running? None: not ours to judge."""
    owner = labels.get(LABEL_OWNER)
    if owner:
        return engine.running(owner)
    if labels.get(LABEL_HOST) != socket.gethostname():
        return None  # another machine's run
    pid = int(labels.get(LABEL_PID) or 0)
    if not pid:
        return False
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
        if alive is None:
            owner = f"on {labels.get(LABEL_HOST, '?')}"
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

"""dstream/runtime/leftovers.py: an owner dstream cannot resolve is unknown, never dead."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from dstream.runtime import pids
from dstream.runtime.leftovers import (
    LABEL_HOST,
    LABEL_OWNER,
    LABEL_OWNER_POD_UID,
    LABEL_PID,
    LABEL_PID_NS,
    LABEL_PID_STARTED,
    owner_alive,
    pid_namespace,
)


class Engine:
    def __init__(self, containers: dict[str, bool | None], pods: dict[str, list[str]] | None = None) -> None:
        self._containers = containers
        self._pods = pods or {}

    def running(self, name: str) -> bool | None:
        return self._containers.get(name)

    def containers(self, *labels: str) -> list[dict[str, Any]]:
        uid = labels[0].split("=", 1)[1]
        return [{"State": state} for state in self._pods.get(uid, [])]


def _here(pid: int, **extra: str) -> dict[str, str]:
    return {LABEL_HOST: socket.gethostname(), LABEL_PID: str(pid), **extra}


def test_a_process_owner_on_this_host_and_namespace_is_judged() -> None:
    me = _here(os.getpid(), **{LABEL_PID_STARTED: repr(pids.started_at()), LABEL_PID_NS: pid_namespace()})
    assert owner_alive(me, Engine({})) is True
    gone = _here(2**22 + 7, **{LABEL_PID_STARTED: "1.0", LABEL_PID_NS: pid_namespace()})
    assert owner_alive(gone, Engine({})) is False  # a real leftover is still found


@pytest.mark.parametrize(
    ("labels", "engine"),
    [
        # Kubernetes: the hostname is the pod name, which names no container (a534dc5: dead).
        ({LABEL_OWNER: "orders-7d9f-abcde"}, Engine({})),
        # The pod, from the downward API: no container of that uid on this engine (containerd).
        ({LABEL_OWNER_POD_UID: "uid-1", LABEL_OWNER: "orders-7d9f-abcde"}, Engine({}, {})),
        # Same host name, another pid namespace (a container on the host network).
        (_here(2**22 + 7, **{LABEL_PID_STARTED: "1.0", LABEL_PID_NS: "pid:[1]"}), Engine({})),
        # No pid at all.
        ({LABEL_HOST: socket.gethostname()}, Engine({})),
        # Another machine.
        ({LABEL_HOST: "elsewhere", LABEL_PID: "1"}, Engine({})),
    ],
)
def test_an_owner_that_cannot_be_resolved_is_unknown(labels: dict[str, str], engine: Engine) -> None:
    assert owner_alive(labels, engine) is None


def test_a_pod_owner_is_alive_while_its_pod_runs_and_a_stopped_owner_container_is_dead() -> None:
    assert owner_alive({LABEL_OWNER_POD_UID: "uid-1"}, Engine({}, {"uid-1": ["exited", "running"]})) is True
    assert owner_alive({LABEL_OWNER: "dstream-t.1.abc"}, Engine({"dstream-t.1.abc": False})) is False
    assert owner_alive({LABEL_OWNER: "dstream-t.1.abc"}, Engine({"dstream-t.1.abc": True})) is True

"""The Docker Swarm operations ``dstream deploy`` needs: configs, secrets, services.

Every call goes through :class:`~dstream.runtime.docker.DockerEngine`, which translates
docker-py's errors; this module sees only plain values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dstream.errors import RuntimeFailure
from dstream.runtime.leftovers import LABEL_DEPLOY

if TYPE_CHECKING:
    from dstream.runtime.docker import DockerEngine


class Swarm:
    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine

    def ensure_active(self) -> None:
        if self.engine.swarm_state() != "active":
            raise RuntimeFailure(
                "this Docker engine is not in swarm mode; run `docker swarm init --advertise-addr 127.0.0.1` "
                "(one node is enough), or deploy to Kubernetes with `dstream deploy TASK --print kubernetes`"
            )

    def create_config(self, name: str, data: bytes, labels: dict[str, str]) -> str:
        return self.engine.swarm_object("config", name, data, labels)

    def create_secret(self, name: str, data: bytes, labels: dict[str, str]) -> str:
        return self.engine.swarm_object("secret", name, data, labels)

    def create_service(self, name: str, image: str, **settings: Any) -> str:
        return self.engine.create_service(name, image, **settings)

    def services(self, label: str = LABEL_DEPLOY) -> list[dict[str, Any]]:
        return self.engine.services(label=label)

    def service(self, name: str) -> dict[str, Any] | None:
        found = self.engine.services(name=name)
        return found[0] if found else None

    def running_tasks(self, service_id: str) -> int:
        return sum(1 for t in self.engine.service_tasks(service_id) if t["Status"]["State"] == "running")

    def replica_names(self, service_id: str, service_name: str) -> set[str]:
        """The container names of every replica the service ran (Swarm keeps a task history):
        ``<service>.<slot>.<task id>``, which ``DSTREAM_OWNER_CONTAINER`` labels providers with."""
        return {f"{service_name}.{t.get('Slot')}.{t['ID']}" for t in self.engine.service_tasks(service_id)}

    def remove_service(self, service_id: str) -> None:
        self.engine.remove_service(service_id)

    def containers(self, *labels: str) -> list[str]:
        return [c["Id"] for c in self.engine.containers(*labels)]

    def nodes(self) -> int:
        return self.engine.swarm_nodes()

    def remove_labelled(self, label: str) -> tuple[int, int]:
        """Remove the configs and secrets carrying ``label`` (after their service is gone)."""
        return self.engine.remove_swarm_objects(label)

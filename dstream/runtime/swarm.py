"""The Docker Swarm operations ``dstream deploy`` needs: configs, secrets, services."""

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
        existing = self.engine.client.configs.list(filters={"name": name})
        if existing:
            return str(existing[0].id)
        return str(self.engine.client.configs.create(name=name, data=data, labels=labels).id)

    def create_secret(self, name: str, data: bytes, labels: dict[str, str]) -> str:
        existing = self.engine.client.secrets.list(filters={"name": name})
        if existing:
            return str(existing[0].id)
        return str(self.engine.client.secrets.create(name=name, data=data, labels=labels).id)

    def create_service(self, name: str, image: str, **settings: Any) -> str:
        return self.engine.create_service(name, image, **settings)

    def services(self, label: str = LABEL_DEPLOY) -> list[Any]:
        return list(self.engine.client.services.list(filters={"label": label}))

    def service(self, name: str) -> Any | None:
        found = [s for s in self.engine.client.services.list(filters={"name": name}) if s.name == name]
        return found[0] if found else None

    def containers(self, label: str) -> list[str]:
        return [c["Id"] for c in self.engine.client.api.containers(all=True, filters={"label": label})]

    def remove_labelled(self, label: str) -> tuple[int, int]:
        """Remove the configs and secrets carrying ``label`` (after their service is gone)."""
        configs = self.engine.client.configs.list(filters={"label": label})
        secrets = self.engine.client.secrets.list(filters={"label": label})
        for item in [*configs, *secrets]:
            self.engine.remove_quietly(item)
        return len(configs), len(secrets)

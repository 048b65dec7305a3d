"""The Docker engine, through docker-py. The only module that imports ``docker``.

Every engine operation dstream needs is a method of :class:`DockerEngine` that takes and
returns plain Python values and translates docker-py's exceptions into dstream's, so the
modules built on it (:mod:`~dstream.runtime.container` for provider containers,
:mod:`~dstream.runtime.leftovers`, :mod:`~dstream.runtime.swarm`) never see docker-py.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
from docker.types import ConfigReference, LogConfig, Mount, RestartPolicy, SecretReference, ServiceMode

from dstream.errors import DistributionError, RuntimeFailure
from dstream.runtime.base import LABEL_TASK

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def _engine_error(exc: Exception) -> RuntimeFailure:
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return RuntimeFailure(
        f"cannot reach the Docker engine at {where}: {exc}. Is dockerd running? "
        f"(`make services` starts one on a development machine)"
    )


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)


class DockerEngine:
    """Engine operations dstream needs: images, containers, attach, build, push, Swarm."""

    def __init__(self) -> None:
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=300)
                self._client.ping()
            except docker.errors.DockerException as exc:
                self._client = None
                raise _engine_error(exc) from None
        return self._client

    # -- images ------------------------------------------------------------------------

    def image(self, ref: str) -> dict[str, Any] | None:
        """``docker image inspect`` of ``ref``, or None when the engine does not have it."""
        try:
            return dict(self.client.api.inspect_image(ref))
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as exc:
            if exc.status_code == 404:
                return None
            raise RuntimeFailure(f"cannot inspect image {ref}: {_explain(exc)}") from None

    def pull(self, repository: str, reference: str, on_event: Callable[[dict[str, Any]], None]) -> None:
        """Pull ``repository`` at a tag or digest, reporting each progress event."""
        try:
            for event in self.client.api.pull(repository, tag=reference, stream=True, decode=True):
                if "error" in event:
                    raise DistributionError(f"pulling {repository}:{reference} failed: {event['error']}")
                on_event(event)
        except docker.errors.APIError as exc:
            raise DistributionError(f"pulling {repository}:{reference} failed: {_explain(exc)}") from None

    def build(self, context: Path, tag: str, buildargs: dict[str, str], labels: dict[str, str]) -> Iterator[str]:
        """Build an image (legacy builder), yielding its output lines."""
        try:
            for event in self.client.api.build(
                path=str(context), tag=tag, buildargs=buildargs, labels=labels, rm=True, decode=True, pull=False
            ):
                if "error" in event:
                    raise RuntimeFailure(f"building {tag} failed: {event['error'].strip()}")
                if "stream" in event and event["stream"].strip():
                    yield event["stream"].rstrip()
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"building {tag} failed: {_explain(exc)}") from None

    def push(self, repository: str, tag: str, on_event: Callable[[dict[str, Any]], None]) -> str:
        """Push ``repository:tag``; returns the manifest digest the registry reported."""
        digest = ""
        try:
            for event in self.client.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise DistributionError(f"pushing {repository}:{tag} failed: {event['error']}")
                aux = event.get("aux") or {}
                digest = aux.get("Digest", digest)
                on_event(event)
        except docker.errors.APIError as exc:
            raise DistributionError(f"pushing {repository}:{tag} failed: {_explain(exc)}") from None
        return digest

    def tag(self, source: str, repository: str, tag: str) -> None:
        self.client.api.tag(source, repository, tag=tag)

    def run_probe(self, image: str, command: list[str]) -> str:
        """Run a short command in ``image`` (no network) and return its output."""
        if self.image(image) is None:  # never let a probe pull implicitly
            raise RuntimeFailure(f"image {image} is not in the local engine")
        try:
            out = self.client.containers.run(image, command, remove=True, network_mode="none", stderr=True)
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(f"cannot run {image}: {exc}") from None
        return bytes(out).decode().strip()

    # -- containers ----------------------------------------------------------------------

    def dstream_containers(self, task: str | None = None) -> list[dict[str, Any]]:
        filters = {"label": [f"{LABEL_TASK}={task}" if task else LABEL_TASK]}
        try:
            return list(self.client.api.containers(all=True, filters=filters))
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot list containers: {_explain(exc)}") from None

    def create(
        self,
        image: str,
        *,
        name: str,
        labels: dict[str, str],
        user: str | None,
        env: dict[str, str],
        mounts: list[tuple[str, str, bool]],
        host: dict[str, Any],
        what: str,
    ) -> str:
        """Create a provider container with an open stdin (``StdinOnce``: closing our stdin
        connection is its end-of-file) and no log driver; ``host`` holds HostConfig settings."""
        api = self.client.api
        host_config = api.create_host_config(
            **host,
            log_config=LogConfig(type="none"),
            mounts=[Mount(target=t, source=s, type="bind", read_only=ro) for s, t, ro in mounts],
        )
        try:
            created = api.create_container(
                image,
                name=name,
                stdin_open=True,
                detach=False,  # with stdin_open: StdinOnce, so closing our stdin is EOF
                tty=False,
                labels=labels,
                user=user,
                environment=env or None,
                host_config=host_config,
            )
        except docker.errors.ImageNotFound:
            raise RuntimeFailure(f"{what} image {image} is not in the engine (pull it first)") from None
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot create the {what} container: {_explain(exc)}") from None
        return str(created["Id"])

    def attach(self, container: str, stream: str) -> tuple[Any, socket.socket]:
        """A hijacked connection to one of the container's streams (``stdin``, ``stdout``,
        ``stderr``): docker-py's response object, which must be kept alive, and its socket."""
        raw = self.client.api.attach_socket(container, {stream: 1, "stream": 1})
        sock = getattr(raw, "_sock", raw)
        if not isinstance(sock, socket.socket):
            raise RuntimeFailure("this Docker connection type does not expose a socket (use a unix or tcp DOCKER_HOST)")
        return raw, sock

    def start(self, container: str, what: str) -> None:
        try:
            self.client.api.start(container)
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot start {what}: {_explain(exc)}") from None

    def wait(self, container: str) -> int:
        """Block until the container exits; its exit code (-9 if it was removed first)."""
        try:
            return int(self.client.api.wait(container).get("StatusCode", -1))
        except docker.errors.NotFound:
            return -9
        except docker.errors.APIError:
            return -1

    def signal(self, container: str, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            self.client.api.kill(container, name)

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(container_id, force=True)

    def running(self, container: str) -> bool:
        try:
            return bool(self.client.api.inspect_container(container)["State"]["Running"])
        except docker.errors.NotFound:
            return False

    # -- Swarm ---------------------------------------------------------------------------

    def swarm_state(self) -> str:
        return str(self.client.info().get("Swarm", {}).get("LocalNodeState") or "")

    def create_service(
        self,
        name: str,
        image: str,
        *,
        args: list[str],
        replicas: int,
        labels: dict[str, str],
        env: dict[str, str],
        mounts: list[str],
        configs: list[tuple[str, str, str]],
        secrets: list[tuple[str, str, str]],
        network: str | None,
    ) -> str:
        try:
            service = self.client.services.create(
                image,
                args=args,
                name=name,
                labels=labels,
                container_labels=labels,
                env=[f"{k}={v}" for k, v in env.items()],
                mounts=mounts,
                mode=ServiceMode("replicated", replicas=replicas),
                configs=[ConfigReference(cid, cname, target) for cid, cname, target in configs],
                secrets=[SecretReference(sid, sname, target) for sid, sname, target in secrets],
                restart_policy=RestartPolicy(condition="on-failure", delay=1_000_000_000),
                stop_grace_period=30_000_000_000,
                networks=[network] if network else None,
            )
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot create the service {name}: {_explain(exc)}") from None
        return str(service.id)

    def remove_quietly(self, item: Any) -> None:
        """Remove a Swarm object (config, secret, service) that may already be gone."""
        with contextlib.suppress(docker.errors.NotFound):
            item.remove()

"""The Docker engine, through docker-py. The only module that imports ``docker``.

Every engine operation dstream needs is a method of :class:`DockerEngine` that takes and
returns plain Python values, so the modules built on it (:mod:`~dstream.runtime.container`
for provider containers, :mod:`~dstream.runtime.leftovers`, :mod:`~dstream.runtime.swarm`,
``dstream deploy``) never see docker-py. docker-py's exceptions are translated here: most
calls run inside :func:`engine_errors`, a context manager (as httpx's
``map_httpcore_exceptions`` in ``httpx/_transports/default.py``); other methods catch
docker-py's errors themselves, where one means something (a 404 that is "not there") or to
say which operation failed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import requests.exceptions
from docker.types import ConfigReference, LogConfig, Mount, RestartPolicy, SecretReference, ServiceMode

from dstream import log
from dstream.errors import DistributionError, DStreamError, RuntimeFailure
from dstream.runtime.base import LABEL_TASK

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

_log = log.get("docker")


def _engine_error(exc: Exception, where: str) -> RuntimeFailure:
    return RuntimeFailure(
        f"cannot reach the Docker engine at {where}: {exc}. Is dockerd running? "
        f"(`make services` starts one on a development machine)"
    )


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)


@contextlib.contextmanager
def engine_errors(what: str, error: type[DStreamError] = RuntimeFailure) -> Iterator[None]:
    """Translate every docker-py (and underlying requests) error raised inside into ``error``
    with ``what`` failed and the engine's own explanation: no docker-py traceback reaches a user."""
    try:
        yield
    except docker.errors.APIError as exc:
        raise error(f"{what} failed: {_explain(exc)}") from None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise error(
            f"{what} failed: cannot reach the Docker engine ({exc}). Is dockerd running, and DOCKER_HOST right?"
        ) from None


def registry_credentials(registry: str | None) -> dict[str, str] | None:
    """What ``docker login`` stored for ``registry`` (None: Docker Hub), as the docker CLI
    finds it: ``credHelpers``/``credsStore`` credential helpers first, then ``auths`` in
    ``$DOCKER_CONFIG/config.json``. ``{"username", "password"}`` or ``{"identity_token"}``;
    None when there is nothing (or the helper cannot be run: then anonymous access is tried)."""
    import docker.auth

    with warnings.catch_warnings():  # docker-py warns when a configured helper is not on PATH
        warnings.simplefilter("ignore")
        try:
            found = docker.auth.load_config().resolve_authconfig(registry)
        except docker.errors.DockerException as exc:
            _log.warning("cannot get the docker credentials for %s: %s", registry or "Docker Hub", exc)
            return None
    if not found:
        return None
    token = found.get("IdentityToken") or found.get("identitytoken")
    if token:
        return {"identity_token": str(token)}
    username = found.get("Username") or found.get("username")
    password = found.get("Password") or found.get("password")
    if not username or password is None:
        return None
    return {"username": str(username), "password": str(password)}


def _client_settings() -> tuple[dict[str, Any], str]:
    """How to reach the engine, as the docker CLI decides: ``DOCKER_HOST`` (with
    ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``) when set, else the current ``docker context``
    (``DOCKER_CONTEXT``, or ``currentContext`` in the docker config), else the local socket.
    Returns DockerClient arguments (empty: from the environment) and where that is, for errors."""
    if os.environ.get("DOCKER_HOST"):
        return {}, os.environ["DOCKER_HOST"]
    from docker.context import ContextAPI
    from docker.context.config import get_current_context_name

    name = os.environ.get("DOCKER_CONTEXT") or get_current_context_name()
    if not name or name == "default":
        return {}, "unix:///var/run/docker.sock"
    try:
        context = ContextAPI.get_context(name)
    except docker.errors.DockerException as exc:
        raise RuntimeFailure(f"cannot read docker context {name}: {exc}") from None
    if context is None or not context.Host:
        raise RuntimeFailure(f"docker context {name} does not exist or names no Docker endpoint (docker context ls)")
    return {"base_url": context.Host, "tls": context.TLSConfig or False}, f"{context.Host} (docker context {name})"


class DockerEngine:
    """Engine operations dstream needs: images, containers, attach, build, push, Swarm."""

    def __init__(self) -> None:
        self._client: docker.DockerClient | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            settings, where = _client_settings()
            try:
                if settings:
                    self._client = docker.DockerClient(timeout=300, **settings)
                else:
                    self._client = docker.from_env(timeout=300)
                self._client.ping()
            except docker.errors.DockerException as exc:
                self._client = None
                raise _engine_error(exc, where) from None
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
        with engine_errors(f"pulling {repository}:{reference}", DistributionError):
            for event in self.client.api.pull(repository, tag=reference, stream=True, decode=True):
                if "error" in event:
                    raise DistributionError(f"pulling {repository}:{reference} failed: {event['error']}")
                on_event(event)

    def build(self, context: Path, tag: str, buildargs: dict[str, str], labels: dict[str, str]) -> Iterator[str]:
        """Build an image (legacy builder), yielding its output lines."""
        with engine_errors(f"building {tag}"):
            for event in self.client.api.build(
                path=str(context), tag=tag, buildargs=buildargs, labels=labels, rm=True, decode=True, pull=False
            ):
                if "error" in event:
                    raise RuntimeFailure(f"building {tag} failed: {event['error'].strip()}")
                if "stream" in event and event["stream"].strip():
                    yield event["stream"].rstrip()

    def push(self, repository: str, tag: str, on_event: Callable[[dict[str, Any]], None]) -> str:
        """Push ``repository:tag``; returns the manifest digest the registry reported."""
        digest = ""
        with engine_errors(f"pushing {repository}:{tag}", DistributionError):
            for event in self.client.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise DistributionError(f"pushing {repository}:{tag} failed: {event['error']}")
                aux = event.get("aux") or {}
                digest = aux.get("Digest", digest)
                on_event(event)
        return digest

    def tag(self, source: str, repository: str, tag: str) -> None:
        with engine_errors(f"tagging {source} as {repository}:{tag}"):
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
        with engine_errors(f"attaching to the {stream} of container {container[:12]}"):
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
        """Remove a container, whatever its state; one already gone, or going, is fine."""
        try:
            self.client.api.remove_container(container_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # "removal ... is already in progress" (a reaper, a next run)
                raise RuntimeFailure(f"cannot remove container {container_id[:12]}: {_explain(exc)}") from None

    def running(self, container: str) -> bool | None:
        """Is the container running? None when the engine knows no such container."""
        try:
            with engine_errors(f"inspecting container {container[:12]}"):
                try:
                    return bool(self.client.api.inspect_container(container)["State"]["Running"])
                except docker.errors.NotFound:
                    return None
        except RuntimeFailure:
            return None  # the engine cannot tell: not known to be stopped

    # -- Swarm ---------------------------------------------------------------------------

    def swarm_state(self) -> str:
        with engine_errors("asking the Docker engine for its swarm state"):
            return str(self.client.info().get("Swarm", {}).get("LocalNodeState") or "")

    def swarm_nodes(self) -> int:
        with engine_errors("listing the swarm nodes"):
            return len(self.client.nodes.list())

    def swarm_object(self, kind: str, name: str, data: bytes, labels: dict[str, str]) -> str:
        """The id of the config or secret (``kind``) ``name``, created when it is missing."""
        collection = self.client.configs if kind == "config" else self.client.secrets
        with engine_errors(f"creating the swarm {kind} {name}"):
            existing = [item for item in collection.list(filters={"name": name}) if item.name == name]
            if existing:
                return str(existing[0].id)
            return str(collection.create(name=name, data=data, labels=labels).id)

    def remove_swarm_objects(self, label: str) -> tuple[int, int]:
        """Remove the configs and secrets carrying ``label``; how many of each."""
        counts = []
        for kind, collection in (("configs", self.client.configs), ("secrets", self.client.secrets)):
            with engine_errors(f"removing the swarm {kind} labelled {label}"):
                items = collection.list(filters={"label": label})
                for item in items:
                    with contextlib.suppress(docker.errors.NotFound):
                        item.remove()
            counts.append(len(items))
        return counts[0], counts[1]

    def services(self, label: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        """Swarm services (their ``docker service inspect`` documents), by label or exact name."""
        filters = {"label": label} if label else {"name": name}
        with engine_errors("listing swarm services"):
            found = self.client.api.services(filters=filters)
        return [dict(s) for s in found if name is None or s["Spec"]["Name"] == name]

    def service_tasks(self, service_id: str) -> list[dict[str, Any]]:
        with engine_errors(f"listing the tasks of service {service_id[:12]}"):
            return [dict(t) for t in self.client.api.tasks(filters={"service": service_id})]

    def remove_service(self, service_id: str) -> None:
        try:
            self.client.api.remove_service(service_id)
        except docker.errors.NotFound:
            pass  # already gone: that is what was asked
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot remove service {service_id[:12]}: {_explain(exc)}") from None

    def containers(self, *labels: str) -> list[dict[str, Any]]:
        """Containers (running or not) carrying every one of ``labels`` (``key`` or ``key=value``)."""
        with engine_errors("listing containers"):
            return list(self.client.api.containers(all=True, filters={"label": list(labels)}))

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
        with engine_errors(f"creating the service {name}"):
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
                # 0400, root's (the orchestrator runs as root): a pulled executable, run as an
                # unprivileged uid beside it, cannot read them (Swarm's default is 0444).
                secrets=[SecretReference(sid, sname, target, mode=0o400) for sid, sname, target in secrets],
                restart_policy=RestartPolicy(condition="on-failure", delay=1_000_000_000),
                stop_grace_period=30_000_000_000,
                networks=[network] if network else None,
            )
        return str(service.id)

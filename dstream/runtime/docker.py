"""Providers as containers on a Docker engine. The only module that imports ``docker``.

Data path: the container is created with an open stdin (``StdinOnce``) and the ``none``
log driver, so stdout never goes through a log file. Before it starts, dstream attaches
three separate hijacked connections: stdout (the data), stderr (logs, forwarded), and
stdin. Closing the stdin connection is how end-of-file reaches the provider: with
``StdinOnce`` the engine closes the container's stdin when that client goes away, which
is reliable where half-closing a shared socket is not.

Containers are hardened by default (no capabilities, no-new-privileges, read-only root
with a tmpfs /tmp, pids and memory limits, no published ports, no Docker socket) and
labelled with task, role and run id so leftovers of a killed run can be found.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
from docker.types import LogConfig, Mount

from dstream import log
from dstream.errors import DistributionError, RuntimeFailure
from dstream.runtime.base import (
    LABEL_ROLE,
    LABEL_RUN,
    LABEL_TASK,
    READ_CHUNK,
    ProviderSpec,
    StderrSink,
    StderrTail,
)
from dstream.runtime.frames import STDERR, STDOUT, FrameDemux
from dstream.task.background import pid_alive

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_log = log.get("docker")

LABEL_HOST = "io.dstream.host"
LABEL_PID = "io.dstream.pid"
LABEL_OWNER = "io.dstream.owner-container"  # set when dstream itself runs in a container
LABEL_DEPLOY = "io.dstream.deploy"
DEFAULT_MEMORY = 1024 * 1024 * 1024
DEFAULT_PIDS = 256
_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def _engine_error(exc: Exception) -> RuntimeFailure:
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return RuntimeFailure(
        f"cannot reach the Docker engine at {where}: {exc}. Is dockerd running? "
        f"(`make services` starts one on a development machine)"
    )


class DockerEngine:
    """Engine operations dstream needs: images, containers, build, push."""

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
            raise RuntimeFailure(f"cannot inspect image {ref}: {exc.explanation or exc}") from None

    def pull(self, repository: str, reference: str, on_event: Callable[[dict[str, Any]], None]) -> None:
        """Pull ``repository`` at a tag or digest, reporting each progress event."""
        try:
            for event in self.client.api.pull(repository, tag=reference, stream=True, decode=True):
                if "error" in event:
                    raise DistributionError(f"pulling {repository}:{reference} failed: {event['error']}")
                on_event(event)
        except docker.errors.APIError as exc:
            raise DistributionError(f"pulling {repository}:{reference} failed: {exc.explanation or exc}") from None

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
            raise RuntimeFailure(f"building {tag} failed: {exc.explanation or exc}") from None

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
            raise DistributionError(f"pushing {repository}:{tag} failed: {exc.explanation or exc}") from None
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
            raise RuntimeFailure(f"cannot list containers: {exc.explanation or exc}") from None

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(container_id, force=True)

    def running(self, container: str) -> bool:
        try:
            return bool(self.client.api.inspect_container(container)["State"]["Running"])
        except docker.errors.NotFound:
            return False


@dataclass(frozen=True)
class Leftover:
    container_id: str
    name: str
    run_id: str
    role: str


def find_leftovers(engine: DockerEngine, task: str) -> list[Leftover]:
    """Containers of ``task`` whose dstream process is gone (e.g. killed -9).

    A dstream running on this host is judged by its pid; one running in a container (a
    deployed replica) by whether that container still runs.
    """
    host = socket.gethostname()
    found = []
    for info in engine.dstream_containers(task):
        labels = info.get("Labels") or {}
        owner = labels.get(LABEL_OWNER)
        if owner:
            if engine.running(owner):
                continue
        elif labels.get(LABEL_HOST) != host:
            continue  # another machine's run: not ours to judge
        else:
            pid = int(labels.get(LABEL_PID) or 0)
            if pid and _alive(pid):
                continue
        name = (info.get("Names") or ["?"])[0].lstrip("/")
        found.append(Leftover(info["Id"], name, labels.get(LABEL_RUN, "?"), labels.get(LABEL_ROLE, "?")))
    return found


def describe_containers(engine: DockerEngine) -> list[dict[str, str]]:
    """Rows for ``dstream ps``: every dstream container with its task, run and owner state."""
    host = socket.gethostname()
    rows = []
    for info in engine.dstream_containers():
        labels = info.get("Labels") or {}
        pid = int(labels.get(LABEL_PID) or 0)
        if labels.get(LABEL_HOST) != host:
            owner = f"on {labels.get(LABEL_HOST, '?')}"
        else:
            owner = f"pid {pid}" if pid and _alive(pid) else "gone (leftover)"
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


def _alive(pid: int) -> bool:
    if not pid_alive(pid):
        return False
    # A recycled pid would not be a dstream process.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"dstream" in cmdline or b"pytest" in cmdline


def _mounts(spec: ProviderSpec) -> list[Mount]:
    mounts = []
    for entry in spec.block.container.mounts:
        parts = entry.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise RuntimeFailure(f'{spec.role} container mount {entry!r}: use "SOURCE:TARGET" or "SOURCE:TARGET:ro"')
        source = Path(parts[0]).expanduser()
        source = source if source.is_absolute() else (spec.base_dir / source)
        resolved = str(source.resolve())
        if resolved in _DOCKER_SOCKETS or parts[0] in _DOCKER_SOCKETS:
            raise RuntimeFailure("mounting the Docker socket into a provider container is not allowed")
        mounts.append(
            Mount(target=parts[1], source=resolved, type="bind", read_only=len(parts) == 3 and parts[2] == "ro")
        )
    return mounts


def _container_name(spec: ProviderSpec) -> str:
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", spec.task)[:60]
    return f"dstream-{safe}-{spec.role}-{spec.run_id}"


class DockerProcess:
    def __init__(self, engine: DockerEngine, container_id: str, role: str, description: str, tail: StderrTail) -> None:
        self.role = role
        self.description = description
        self._engine = engine
        self._id = container_id
        self._tail = tail
        self._demux = FrameDemux()
        self._code: int | None = None
        self._streams: list[Any] = []  # keep docker-py responses alive with their sockets
        self._sockets: dict[str, socket.socket] = {}
        self._stdout: asyncio.StreamReader | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._stdout_writer: asyncio.StreamWriter | None = None
        self._stderr_writer: asyncio.StreamWriter | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._exit_task: asyncio.Task[int] | None = None
        self._removed = False

    async def attach(self) -> None:
        api = self._engine.client.api
        self._stdout, self._stdout_writer = await self._open(api, "stdout")
        stderr, self._stderr_writer = await self._open(api, "stderr")
        _, self._stdin = await self._open(api, "stdin")
        self._stderr_task = asyncio.create_task(self._pump_stderr(stderr))

    async def _open(self, api: Any, stream: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raw = await asyncio.to_thread(api.attach_socket, self._id, {stream: 1, "stream": 1})
        self._streams.append(raw)
        sock = getattr(raw, "_sock", raw)
        if not isinstance(sock, socket.socket):
            raise RuntimeFailure("this Docker connection type does not expose a socket (use a unix or tcp DOCKER_HOST)")
        self._sockets[stream] = sock
        with contextlib.suppress(OSError):  # bigger buffers: fewer wake-ups per megabyte
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.setblocking(False)
        return await asyncio.open_connection(sock=sock, limit=READ_CHUNK)

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._engine.client.api.start, self._id)
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot start {self.description}: {exc.explanation or exc}") from None
        self._exit_task = asyncio.create_task(self._wait_exit())

    async def _wait_exit(self) -> int:
        try:
            result = await asyncio.to_thread(self._engine.client.api.wait, self._id)
            code = int(result.get("StatusCode", -1))
        except docker.errors.NotFound:
            code = -9
        except docker.errors.APIError:
            code = -1
        self._code = code
        return code

    async def _pump_stderr(self, reader: asyncio.StreamReader) -> None:
        demux = FrameDemux()
        try:
            while chunk := await reader.read(65536):
                data = demux.feed(chunk).get(STDERR)
                if data:
                    self._tail.feed(data)
        except (ConnectionError, OSError):
            pass
        self._tail.close()

    async def read(self, n: int = READ_CHUNK) -> bytes:
        assert self._stdout is not None
        while True:
            try:
                chunk = await self._stdout.read(n)
            except (ConnectionError, OSError):
                return b""
            if not chunk:
                return b""
            data = self._demux.feed(chunk).get(STDOUT)
            if data:
                return data

    async def write(self, data: bytes) -> None:
        if self._stdin is None or self._stdin.is_closing():
            raise BrokenPipeError(f"{self.description}: stdin is closed")
        self._stdin.write(data)
        await self._stdin.drain()

    async def close_stdin(self) -> None:
        if self._stdin is not None and not self._stdin.is_closing():
            with contextlib.suppress(ConnectionError, OSError):
                await self._stdin.drain()
            # docker-py's response still references this socket, so close() alone would
            # not end the connection; shutdown does, and StdinOnce turns that into EOF.
            self._shutdown("stdin")
            self._stdin.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._stdin.wait_closed()

    def _shutdown(self, stream: str) -> None:
        sock = self._sockets.get(stream)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def wait(self) -> int:
        assert self._exit_task is not None
        code = await asyncio.shield(self._exit_task)
        if self._stderr_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 2)
        return code

    @property
    def returncode(self) -> int | None:
        return self._code

    async def terminate(self) -> None:
        await self._signal("SIGTERM")

    async def kill(self) -> None:
        await self._signal("SIGKILL")

    async def _signal(self, name: str) -> None:
        if self._code is not None:
            return
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            await asyncio.to_thread(self._engine.client.api.kill, self._id, name)

    async def cleanup(self) -> None:
        if self._removed:
            return
        self._removed = True
        for stream in self._sockets:
            self._shutdown(stream)
        for writer in (self._stdin, self._stdout_writer, self._stderr_writer):
            if writer is not None:
                writer.close()
        for raw in self._streams:
            with contextlib.suppress(OSError, AttributeError):
                raw.close()
        await asyncio.to_thread(self._engine.remove, self._id)
        for task in (self._stderr_task, self._exit_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def stderr_tail(self) -> list[str]:
        return self._tail.tail()


class DockerRuntime:
    """Starts providers as containers from images that distribution resolved."""

    def __init__(self, engine: DockerEngine | None = None) -> None:
        self.engine = engine or DockerEngine()

    async def start(self, spec: ProviderSpec, on_stderr: StderrSink) -> DockerProcess:
        assert spec.image, "the image is resolved before a container starts"
        container_id = await asyncio.to_thread(self._create, spec)
        short = spec.image.split("/")[-1].split("@")[0]
        description = f"{spec.role} provider {short} (container {container_id[:12]})"
        proc = DockerProcess(self.engine, container_id, spec.role, description, StderrTail(on_stderr))
        try:
            await proc.attach()
            await proc.start()
        except BaseException:
            await proc.cleanup()
            raise
        return proc

    def _create(self, spec: ProviderSpec) -> str:
        api = self.engine.client.api
        settings = spec.block.container
        labels = {
            **spec.labels,
            LABEL_HOST: socket.gethostname(),
            LABEL_PID: str(os.getpid()),
            "io.dstream.source": spec.source,
        }
        owner = os.environ.get("DSTREAM_OWNER_CONTAINER")  # set by `dstream deploy`
        if owner or os.environ.get("DSTREAM_IN_CONTAINER"):
            labels[LABEL_OWNER] = owner or socket.gethostname()  # else a container's hostname is its id
        host_config = api.create_host_config(
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            read_only=True if settings.read_only is None else settings.read_only,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"},  # noqa: S108 - a private tmpfs, not the host's /tmp
            pids_limit=settings.pids_limit or DEFAULT_PIDS,
            mem_limit=settings.memory or DEFAULT_MEMORY,
            nano_cpus=int(settings.cpus * 1e9) if settings.cpus else None,
            network_mode=settings.network or "bridge",
            log_config=LogConfig(type="none"),
            mounts=_mounts(spec),
        )
        try:
            created = api.create_container(
                spec.image,
                name=_container_name(spec),
                stdin_open=True,
                detach=False,  # with stdin_open: StdinOnce, so closing our stdin is EOF
                tty=False,
                labels=labels,
                user=settings.user,
                environment=dict(settings.env) or None,
                host_config=host_config,
            )
        except docker.errors.ImageNotFound:
            raise RuntimeFailure(
                f"{spec.role} provider image {spec.image} is not in the engine (pull it first)"
            ) from None
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot create the {spec.role} container: {exc.explanation or exc}") from None
        return str(created["Id"])


class Swarm:
    """The Docker Swarm operations ``dstream deploy`` needs: configs, secrets, services."""

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine

    def ensure_active(self) -> None:
        state = self.engine.client.info().get("Swarm", {}).get("LocalNodeState")
        if state != "active":
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

    def create_service(
        self,
        name: str,
        image: str,
        args: list[str],
        replicas: int,
        labels: dict[str, str],
        env: dict[str, str],
        mounts: list[str],
        configs: list[tuple[str, str, str]],
        secrets: list[tuple[str, str, str]],
        network: str | None,
    ) -> str:
        from docker.types import ConfigReference, RestartPolicy, SecretReference, ServiceMode

        try:
            service = self.engine.client.services.create(
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
            raise RuntimeFailure(f"cannot create the service {name}: {exc.explanation or exc}") from None
        return str(service.id)

    def services(self, label: str = LABEL_DEPLOY) -> list[Any]:
        return list(self.engine.client.services.list(filters={"label": label}))

    def service(self, name: str) -> Any | None:
        found = [s for s in self.engine.client.services.list(filters={"name": name}) if s.name == name]
        return found[0] if found else None

    def remove_labelled(self, label: str) -> tuple[int, int]:
        """Remove the configs and secrets carrying ``label`` (after their service is gone)."""
        configs = self.engine.client.configs.list(filters={"label": label})
        secrets = self.engine.client.secrets.list(filters={"label": label})
        for item in [*configs, *secrets]:
            with contextlib.suppress(docker.errors.NotFound):
                item.remove()
        return len(configs), len(secrets)

"""Providers as containers on a Docker engine (through :class:`~dstream.runtime.docker.DockerEngine`).

Data path: the container is created with an open stdin (``StdinOnce``) and the ``none``
log driver, so stdout never goes through a log file. Before it starts, dstream attaches
three separate hijacked connections: stdout (the data), stderr (logs, forwarded), and
stdin. Closing the stdin connection is how end-of-file reaches the provider: with
``StdinOnce`` the engine closes the container's stdin when that client goes away, which
is reliable where half-closing a shared socket is not.

Containers are hardened by default (no capabilities, no-new-privileges, read-only root
with a noexec tmpfs /tmp, pids and memory limits with no swap beyond, an unprivileged uid
when the image names no USER, no published ports, no Docker socket), run
under an init process so a provider that is PID 1 still stops on SIGTERM, and are labelled
with task, role, run id and their dstream process, so leftovers of a killed run can be found.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dstream import log
from dstream.errors import RuntimeFailure
from dstream.runtime import loosened, pids, reach, reaper
from dstream.runtime.base import READ_CHUNK, ProviderSpec, StderrSink, StderrTail
from dstream.runtime.docker import DockerEngine
from dstream.runtime.frames import STDERR, STDOUT, FrameDemux
from dstream.runtime.leftovers import (
    INSTANCE,
    LABEL_DEPLOY_ID,
    LABEL_HOST,
    LABEL_INSTANCE,
    LABEL_OWNER,
    LABEL_OWNER_POD,
    LABEL_OWNER_POD_UID,
    LABEL_PID,
    LABEL_PID_NS,
    LABEL_PID_STARTED,
    pid_namespace,
)

if TYPE_CHECKING:
    from dstream.config.models import ContainerSettings

_log = log.get("runtime")
DEFAULT_MEMORY = 1024 * 1024 * 1024
DEFAULT_PIDS = 256
UNPRIVILEGED = "65534:65534"  # nobody:nogroup


def mounts(spec: ProviderSpec) -> list[tuple[str, str, bool]]:
    """``container { mounts }`` as (source, target, read_only), sources resolved; never the
    Docker socket nor a folder above it."""
    found = []
    for entry in spec.block.container.mounts:
        parts = loosened.mount_parts(entry)
        if parts is None:
            raise RuntimeFailure(f'{spec.role} container mount {entry!r}: use "SOURCE:TARGET" or "SOURCE:TARGET:ro"')
        source = Path(parts[0]).expanduser()
        source = source if source.is_absolute() else (spec.base_dir / source)
        loosened.refuse_socket(source)
        found.append((str(source.resolve()), parts[1], parts[2]))
    return found


def run_as(settings: ContainerSettings, image_user: str | None) -> str:
    """The container's user: the task's, else the image's USER, else an unprivileged uid
    (an image without USER would run as root)."""
    return settings.user or image_user or UNPRIVILEGED


def host_settings(settings: ContainerSettings) -> dict[str, Any]:
    """The hardened HostConfig, with the block's ``container { }`` overrides applied."""
    memory = settings.memory or DEFAULT_MEMORY
    return {
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True if settings.read_only is None else settings.read_only,
        "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=64m"},  # noqa: S108 - a private tmpfs, not the host's /tmp
        "pids_limit": settings.pids_limit or DEFAULT_PIDS,
        "mem_limit": memory,
        "memswap_limit": memory,  # no swap on top of the memory limit
        "nano_cpus": int(settings.cpus * 1e9) if settings.cpus else None,
        "network_mode": settings.network or "bridge",
        "init": True if settings.init is None else settings.init,
    }


def owner_labels() -> dict[str, str]:
    """Who runs this container: this dstream process (host, pid namespace, pid and its start
    time, its instance id), the container dstream itself runs in (a deployed orchestrator),
    its pod (Kubernetes, from the downward API) and its Swarm service; see leftovers.py."""
    labels = {
        LABEL_HOST: socket.gethostname(),
        LABEL_PID: str(os.getpid()),
        LABEL_PID_STARTED: repr(pids.started_at()),
        LABEL_PID_NS: pid_namespace(),
        LABEL_INSTANCE: INSTANCE,
    }
    owner = os.environ.get("DSTREAM_OWNER_CONTAINER")  # set by `dstream deploy`
    if owner or os.environ.get("DSTREAM_IN_CONTAINER"):
        labels[LABEL_OWNER] = owner or socket.gethostname()  # else a container's hostname is its id
    if os.environ.get("DSTREAM_OWNER_POD_UID"):  # set by the Kubernetes manifest
        pod = os.environ.get("DSTREAM_OWNER_POD", "?")
        labels[LABEL_OWNER_POD] = f"{os.environ.get('DSTREAM_OWNER_POD_NAMESPACE', '?')}/{pod}"
        labels[LABEL_OWNER_POD_UID] = os.environ["DSTREAM_OWNER_POD_UID"]
    if os.environ.get("DSTREAM_DEPLOY_ID"):  # set by `dstream deploy`
        labels[LABEL_DEPLOY_ID] = os.environ["DSTREAM_DEPLOY_ID"]
    return {k: v for k, v in labels.items() if v}


class _Chunks(asyncio.Protocol):
    """A socket's bytes as the chunks the transport read, handed over without a buffer to
    copy them through (asyncio's StreamReader copies every byte twice more); reading pauses
    above ``limit`` bytes held."""

    def __init__(self, limit: int) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._limit = limit
        self._ended = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._limit and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._ended = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True  # a reset is an end too, as it was for the stream reader
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> list[bytes]:
        """Every chunk held (waiting for one); ``[]`` at the end of the stream."""
        while not self._chunks and not self._ended:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = list(self._chunks)
        self._chunks.clear()
        self._size = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunks


def container_name(spec: ProviderSpec) -> str:
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
        self._stdout: _Chunks | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._stdout_transport: asyncio.BaseTransport | None = None
        self._stderr_writer: asyncio.StreamWriter | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._exit_task: asyncio.Task[int] | None = None
        self._removed = False

    async def attach(self) -> None:
        self._stdout_transport, self._stdout = await self._open_chunks("stdout")
        stderr, self._stderr_writer = await self._open("stderr")
        _, self._stdin = await self._open("stdin")
        self._stderr_task = asyncio.create_task(self._pump_stderr(stderr))

    async def _open(self, stream: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(sock=await self._attach(stream), limit=READ_CHUNK)

    async def _open_chunks(self, stream: str) -> tuple[asyncio.BaseTransport, _Chunks]:
        loop = asyncio.get_running_loop()
        return await loop.create_connection(lambda: _Chunks(READ_CHUNK), sock=await self._attach(stream))

    async def _attach(self, stream: str) -> socket.socket:
        raw, sock = await asyncio.to_thread(self._engine.attach, self._id, stream)
        self._streams.append(raw)
        self._sockets[stream] = sock
        with contextlib.suppress(OSError):  # bigger buffers: fewer wake-ups per megabyte
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        await asyncio.to_thread(self._engine.start, self._id, self.description)
        self._exit_task = asyncio.create_task(self._wait_exit())

    async def _wait_exit(self) -> int:
        self._code = await asyncio.to_thread(self._engine.wait, self._id)
        return self._code

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
        """What the container printed since the last read (about ``n`` bytes, up to twice
        as many when the relay fell behind), in one copy from what the socket gave."""
        assert self._stdout is not None
        while True:
            chunks = await self._stdout.read()
            if not chunks:
                return b""
            data = self._demux.payload(chunks, STDOUT)
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
        if self._code is None:
            await asyncio.to_thread(self._engine.signal, self._id, name)

    async def cleanup(self) -> None:
        if self._removed:
            return
        self._removed = True
        for stream in self._sockets:
            self._shutdown(stream)
        for writer in (self._stdin, self._stdout_transport, self._stderr_writer):
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
        reaper.ensure_started()  # removes this process's containers if it is killed
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
        assert spec.image is not None
        settings = spec.block.container
        inspected = self.engine.image(spec.image) or {}
        user = run_as(settings, (inspected.get("Config") or {}).get("User") or None)
        for text in [*loosened.warnings(settings, spec.base_dir), *reach.warnings(settings, spec.block.config)]:
            _log.warning("%s provider: %s", spec.role, text)
        if settings.user is None and loosened.is_root(user):
            _log.warning("%s provider: its image runs as root (USER %s)", spec.role, user)
        return self.engine.create(
            spec.image,
            name=container_name(spec),
            labels={**spec.labels, **owner_labels(), "io.dstream.source": spec.source},
            user=user,
            env={**_log_level(), **settings.env},
            mounts=mounts(spec),
            host=host_settings(settings),
            what=f"{spec.role} provider",
        )


def _log_level() -> dict[str, str]:
    """The provider logs at dstream's level (DSTREAM_LOG_LEVEL, set from --log-level)."""
    level = os.environ.get("DSTREAM_LOG_LEVEL")
    return {"DSTREAM_LOG_LEVEL": level} if level else {}

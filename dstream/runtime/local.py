"""Providers as local processes (``provider_path``, and ORAS-pulled executables).

Children run in their own session so a terminal's Ctrl-C reaches only dstream, which
then stops them in order, and stopping one signals its whole session (a wrapper script's
children too); on Linux they also get SIGTERM if dstream itself dies. They see a minimal
environment (:func:`provider_environment`), and a root dstream runs pulled executables as
an unprivileged uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from dstream import log
from dstream.errors import RuntimeFailure
from dstream.runtime.base import READ_CHUNK, ProviderSpec, StderrSink, StderrTail

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream.config.models import ContainerSettings

_log = log.get("runtime")
_warned: set[str] = set()
_PR_SET_PDEATHSIG = 1
NOBODY = 65534  # the unprivileged uid/gid a root dstream runs pulled executables as
# All a local provider inherits from dstream's environment (plus LC_*); see provider_environment.
_PASSED = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "DSTREAM_LOG_LEVEL"})


def resolve_executable(path: str, base_dir: Path) -> str:
    """An absolute path for ``provider_path``: a file relative to the task file, or a command on PATH."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or "/" in path:
        full = candidate if candidate.is_absolute() else (base_dir / candidate)
        if not full.exists():
            raise RuntimeFailure(f"provider_path {path!r}: no such file ({full})")
        if not os.access(full, os.X_OK):
            raise RuntimeFailure(f"provider_path {path!r}: {full} is not executable (chmod +x it)")
        return str(full.resolve())
    # Also look beside the running interpreter: providers installed in dstream's own venv.
    search = os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    found = shutil.which(path, path=search)
    if found is None:
        raise RuntimeFailure(
            f"provider_path {path!r} was not found on PATH nor beside {sys.executable}; "
            f"install the provider or give a path relative to the task file"
        )
    return found


def provider_environment(settings: ContainerSettings) -> dict[str, str]:
    """What a local provider sees: a minimal environment, never dstream's own.

    dstream's environment holds the state store's connection string, every secret a
    deployment loaded from $DSTREAM_SECRETS_DIR and unrelated cloud keys; a provider gets
    its config (secrets included) on stdin, so it needs none of them. ``container { env }``
    adds what a provider needs beyond the locale, the search path and the log level.
    """
    env = {name: value for name, value in os.environ.items() if name in _PASSED or name.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings.env)
    return env


def _run_as(settings: ContainerSettings, oras: bool) -> tuple[int, int] | None:
    """The uid/gid a local provider runs as when dstream is root, or None to keep dstream's.

    A root dstream may hold the Docker socket (the orchestrator image): an executable pulled
    from a registry never runs as root beside it, unless ``container { user = "0" }`` says so.
    """
    if os.geteuid() != 0:
        if settings.user is not None and settings.user.split(":")[0] != str(os.geteuid()):
            raise RuntimeFailure(
                f"container.user = {settings.user!r} on a local provider needs dstream to run as root; "
                "remove it, or run the provider from an image"
            )
        return None
    if settings.user is None:
        return (NOBODY, NOBODY) if oras else None
    uid, _, gid = settings.user.partition(":")
    if not uid.isdigit() or not (gid or uid).isdigit():
        raise RuntimeFailure(f"container.user = {settings.user!r}: a local provider takes a numeric UID[:GID]")
    return int(uid), int(gid or uid)


def _warn_about_readable_secrets() -> None:
    """Secret files (Swarm mounts them 0444 by default) that the unprivileged uid could read."""
    folder = os.environ.get("DSTREAM_SECRETS_DIR")
    if not folder or "secrets" in _warned or not Path(folder).is_dir():
        return
    readable = [entry.name for entry in Path(folder).iterdir() if entry.stat().st_mode & stat.S_IROTH]
    if readable:
        _warned.add("secrets")
        _log.warning(
            "secret files in %s are readable by every uid (%s): a pulled executable could read them; "
            "mount them 0400 (Swarm secret mode, Kubernetes defaultMode)",
            folder,
            ", ".join(sorted(readable)),
        )


def _private_copy(executable: str, owner: tuple[int, int]) -> Path:
    """The executable in a fresh folder that only ``owner`` (and root) can enter: the cache
    stays root's own (0700), and the provider gets a HOME it may write."""
    folder = Path(tempfile.mkdtemp(prefix="dstream-provider-"))
    copy = folder / Path(executable).name
    shutil.copyfile(executable, copy)
    copy.chmod(0o555)
    os.chown(folder, *owner)
    return copy


def _can_enter(folder: Path, owner: tuple[int, int]) -> bool:
    """Whether ``owner`` (with no supplementary groups) may enter ``folder`` and each folder above it."""
    uid, gid = owner
    for part in (folder, *folder.parents):
        try:
            st = part.stat()
        except OSError:
            return False
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    # Only a call into a function resolved in the parent (no import or dlopen after fork);
    # it runs after the uid change, which would otherwise clear it.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _resolve_prctl() -> Callable[[int, int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _resolve_prctl()
PIPE_SIZE = 1024 * 1024
STOP_WAIT = 5.0  # how long cleanup waits for a killed session before letting go of it


def _grow_pipes(transport: asyncio.SubprocessTransport) -> None:
    """1 MiB pipes instead of 64 KiB: fewer wake-ups and system calls per megabyte relayed."""
    if sys.platform != "linux":
        return
    import fcntl

    for fd_number in (0, 1):
        pipe = transport.get_pipe_transport(fd_number)
        handle = pipe.get_extra_info("pipe") if pipe is not None else None
        if handle is not None:
            # ValueError: the pipe is already closed (a provider that exited at once).
            with contextlib.suppress(OSError, ValueError):
                fcntl.fcntl(handle.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Knows when the process exits, whoever still holds its pipes (a wrapper script's child)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


class LocalProcess:
    def __init__(
        self,
        role: str,
        description: str,
        transport: asyncio.SubprocessTransport,
        protocol: _Protocol,
        tail: StderrTail,
        private: Path | None = None,
    ) -> None:
        self.role = role
        self.description = description
        self._transport = transport
        self._protocol = protocol
        self._proc = proc = asyncio.subprocess.Process(transport, protocol, asyncio.get_running_loop())
        self._tail = tail
        self._private = private  # a private copy's folder, removed at cleanup
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._stderr_task = asyncio.create_task(self._pump_stderr(proc.stderr))

    async def _pump_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            self._tail.feed(chunk)
        self._tail.close()

    async def read(self, n: int = READ_CHUNK) -> bytes:
        return await self._stdout.read(n)

    async def write(self, data: bytes) -> None:
        if self._stdin.is_closing():
            raise BrokenPipeError(f"{self.description}: stdin is closed")
        self._stdin.write(data)
        await self._stdin.drain()

    async def close_stdin(self) -> None:
        if not self._stdin.is_closing():
            self._stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self._stdin.wait_closed()

    async def wait(self) -> int:
        # Not Process.wait(): that also waits for every pipe to close, which a wrapper
        # script's child (or dstream's own open stdin) can put off forever.
        await self._protocol.exited.wait()
        # stderr is complete once the process is gone and its pipe drained.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._stderr_task), timeout=2)
        code = self._proc.returncode
        assert code is not None
        return code

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    async def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        """Signal the provider's whole session (it leads its own): a wrapper script's children too."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    async def cleanup(self) -> None:
        if not self._stdin.is_closing():
            self._stdin.close()
        self._signal(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._protocol.exited.wait(), STOP_WAIT)
        if not self._stderr_task.done():
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
        self._transport.close()  # the pipes, even those a session we gave up on still holds
        if self._private is not None:
            shutil.rmtree(self._private.parent, ignore_errors=True)
            self._private = None

    def stderr_tail(self) -> list[str]:
        return self._tail.tail()


class LocalRuntime:
    """Runs ``provider_path`` executables (and ORAS-pulled ones) as child processes."""

    async def start(self, spec: ProviderSpec, on_stderr: StderrSink) -> LocalProcess:
        executable = spec.executable or resolve_executable(spec.block.provider_path or "", spec.base_dir)
        settings = spec.block.container
        env = provider_environment(settings)
        owner = _run_as(settings, oras=spec.executable is not None)
        private, cwd = None, spec.base_dir
        if owner is not None and owner[0] != 0:
            _warn_about_readable_secrets()
            private = await asyncio.to_thread(_private_copy, executable, owner)
            executable = str(private)
            env["HOME"] = str(private.parent)
            if not _can_enter(cwd, owner):  # a root-only task folder: work in its own HOME
                cwd = private.parent
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _Protocol(READ_CHUNK, loop),
                executable,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(cwd),
                env=env,
                start_new_session=True,  # setsid in C: Ctrl-C reaches only dstream; killpg reaches all
                preexec_fn=_set_parent_death_signal if _PRCTL is not None else None,
                user=owner[0] if owner else None,
                group=owner[1] if owner else None,
                extra_groups=[] if owner else None,
            )
        except OSError as exc:
            if private is not None:
                shutil.rmtree(private.parent, ignore_errors=True)
            raise RuntimeFailure(f"cannot start {spec.role} provider {executable}: {exc.strerror or exc}") from None
        _grow_pipes(transport)
        description = f"{spec.role} provider {Path(executable).name} (pid {transport.get_pid()})"
        return LocalProcess(spec.role, description, transport, protocol, StderrTail(on_stderr), private)

"""The metrics endpoint listens on loopback unless told otherwise, and idle clients cannot
stop a run or the endpoint (bounded connections, timeouts)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import psutil
import pytest

from dstream.task.metrics import MAX_CONNECTIONS
from tests.e2e.test_metrics import answers, counter_task, free_port
from tests.faults import finish, line_count, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback (traffic stays on this machine)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    pytest.skip("this machine has no non-loopback IPv4 address")


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return False
    return True


def start(path: Path, task: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", task, "-f", str(path), "--metrics-port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def listening(pid: int, port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections("inet") if c.laddr.port == port and not c.raddr}


@pytest.mark.parametrize(("extra", "outside"), [((), False), (("--metrics-host", "0.0.0.0"), True)])  # noqa: S104
def test_metrics_listen_on_loopback_unless_told_otherwise(
    task_file: Callable[..., Path], tmp_path: Path, extra: tuple[str, ...], outside: bool
) -> None:
    address = non_loopback_address()
    out = tmp_path / "out.jsonl"
    path = task_file(counter_task("exposed", out))
    port = free_port()
    proc = start(path, "exposed", port, *extra)
    try:
        wait_until(lambda: answers(port) and line_count(out) >= 5, "the run and its endpoint", proc)
        assert listening(proc.pid, port) == ({"0.0.0.0"} if outside else {"127.0.0.1"})  # noqa: S104
        assert reachable(address, port) is outside
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 0, err
        assert ("0.0.0.0" if outside else "http://127.0.0.1:") in err  # noqa: S104 - the log says where
    finally:
        if proc.poll() is None:
            proc.kill()


def test_500_idle_connections_stop_neither_the_run_nor_the_endpoint(
    task_file: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    path = task_file(counter_task("idle", out))
    port = free_port()
    proc = start(path, "idle", port)
    idle: list[socket.socket] = []
    try:
        wait_until(lambda: answers(port) and line_count(out) >= 5, "the run and its endpoint", proc)
        threads_before = psutil.Process(proc.pid).num_threads()
        for n in range(500):
            with contextlib.suppress(OSError):  # the server may close those over its limit at once
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                if n % 2:
                    conn.sendall(b"GET /metrics HTTP/1.1\r\n")  # half a request, then silence
                idle.append(conn)
        threads = psutil.Process(proc.pid).num_threads()
        # One thread per connection served, at most MAX_CONNECTIONS (before: one per connection, 500).
        assert threads <= threads_before + MAX_CONNECTIONS + 4, (threads_before, threads)
        relayed = line_count(out)
        wait_until(lambda: line_count(out) >= relayed + 20, "the run to go on relaying", proc)
        wait_until(lambda: answers(port), "the endpoint to answer again", proc)
        assert psutil.Process(proc.pid).num_fds() < 200
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 0, err
        assert "Traceback" not in err
    finally:
        for conn in idle:
            conn.close()
        if proc.poll() is None:
            proc.kill()

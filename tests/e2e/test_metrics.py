"""The metrics endpoint as Prometheus clients serve it (OpenMetrics negotiation, gzip),
gauges reported by a provider, and a checkpoint store that stops answering mid-run."""

from __future__ import annotations

import gzip
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import service_unavailable
from tests.faults import finish, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

AZURITE_JS = (
    Path(os.environ.get("DSTREAM_DEV_HOME", "/var/lib/dstream-dev"))
    / "azurite/node_modules/azurite/dist/src/azurite.js"
)
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

GAUGING_TRANSFORM = """
from dstream.sdk import TransformProvider


class Gauging(TransformProvider):
    name = "gauging-transform-provider"

    def transform(self, envelope):
        self.ctx.gauge("seen_value", envelope.data["value"], kind="demo")
        return envelope


Gauging.main()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int, headers: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - an http URL of ours
        return dict(response.headers), response.read()


def values(body: bytes) -> dict[str, float]:
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("dstream_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def counter_task(name: str, out: Path, extra: str = "", transform: str = "") -> str:
    return f"""
        task "{name}" {{
          {extra}
          input {{
            provider_path = "counter-input-provider"
            config {{
              interval = 20
              max_count = 0
              checkpoint_every = 5
            }}
          }}
          {transform}
          output {{
            provider_path = "file-output-provider"
            config {{ path = "{out}" }}
          }}
        }}
        """


def test_openmetrics_gzip_and_provider_gauges(
    task_file: Callable[..., Path], script: Callable[[str, str], Path], tmp_path: Path
) -> None:
    transform = script("gauging-transform-provider", GAUGING_TRANSFORM)
    out = tmp_path / "out.jsonl"
    path = task_file(counter_task("gauged", out, transform=f'transform {{ provider_path = "{transform}" }}'))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", "gauged", "-f", str(path), "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: answers(port), "the metrics endpoint", proc)
        gauge = 'dstream_provider_seen_value{kind="demo",stage="transform-1",task="gauged"}'
        wait_until(lambda: values(scrape(port)[1]).get(gauge, 0) >= 10, "the transform's gauge", proc)
        headers, body = scrape(port, {"Accept": "application/openmetrics-text; version=1.0.0"})
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")
        assert b"dstream_envelopes_in_total" in body
        headers, body = scrape(port, {"Accept-Encoding": "gzip"})
        assert headers.get("Content-Encoding") == "gzip"
        plain = gzip.decompress(body)
        assert plain.startswith(b"# HELP")
        assert values(plain)['dstream_stage_envelopes_total{stage="input",task="gauged"}'] >= 10
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"gauge" not in out.read_bytes()  # gauges go to dstream, never down the pipeline


@pytest.fixture
def private_azurite(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """An Azurite of this test's own, so pausing it disturbs nothing else."""
    if not AZURITE_JS.exists():
        service_unavailable(f"no Azurite at {AZURITE_JS}")
    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen(
        ["node", str(AZURITE_JS), "--blobHost", "127.0.0.1", "--blobPort", str(ports[0]),
         "--queueHost", "127.0.0.1", "--queuePort", str(ports[1]), "--tableHost", "127.0.0.1",
         "--tablePort", str(ports[2]), "--location", str(tmp_path / "azurite"), "--skipApiVersionCheck",
         "--loose", "--silent", "--disableTelemetry"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(up, "the private Azurite")
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{ports[0]}/devstoreaccount1;"
    )
    try:
        yield proc, connection
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


def test_a_checkpoint_store_that_stops_answering_is_reported_within_seconds(
    task_file: Callable[..., Path], tmp_path: Path, private_azurite: tuple[subprocess.Popen[bytes], str]
) -> None:
    azurite, connection = private_azurite
    out = tmp_path / "out.jsonl"
    state = f'state {{\n backend = "azure_blob"\n connection_string = "{connection}"\n }}'
    path = task_file(state + counter_task("stored", out))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", "stored", "-f", str(path), "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr or []], daemon=True).start()

    def logged(text: str, within: float) -> float:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if text in lines.get(timeout=deadline - time.monotonic()):
                    return time.monotonic()
            except queue.Empty:
                break
        raise AssertionError(f"no log line with {text!r} within {within}s")

    try:
        wait_until(lambda: answers(port), "the metrics endpoint", proc)
        persisted = 'dstream_checkpoints_persisted_total{task="stored"}'
        wait_until(lambda: values(scrape(port)[1]).get(persisted, 0) >= 3, "checkpoints in Azure Blob", proc)
        azurite.send_signal(signal.SIGSTOP)  # the store stops answering; connections hang
        paused = time.monotonic()
        warned = logged("has not answered for", within=10)
        assert warned - paused < 6  # within a few seconds, not after the SDK's minutes of retries
        during = values(scrape(port)[1])
        assert during['dstream_checkpoint_age_seconds{task="stored"}'] >= 3
        assert during['dstream_checkpoint_store_stalled_seconds{task="stored"}'] > 0
        before = during[persisted]
        time.sleep(max(0.0, 6 - (time.monotonic() - paused)))  # a six-second outage, as in the issue
        azurite.send_signal(signal.SIGCONT)
        logged("answered again", within=60)
        wait_until(lambda: values(scrape(port)[1])[persisted] > before, "checkpoints again", proc)
        assert values(scrape(port)[1])['dstream_checkpoint_store_stalled_seconds{task="stored"}'] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
